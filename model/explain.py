"""Explanations of a seq2seq model's output: which source tokens, and which tokens of the target prefix, made each
output token. Teacher-forced, on a given output or one the model generates; any of our MT5/UMT5/T5
ForConditionalGeneration models.

- `gradient_x_input`, `saliency`: the gradient of log p(output token) with respect to the token embeddings, times
  the embedding (summed over its dimensions) or as its L2 norm.
- `integrated_gradients`: the gradient integrated on the straight path from a baseline to the real embeddings
  (Captum's defaults: zero embeddings, Gauss-Legendre nodes; or a token's embedding), with the convergence delta.
- `contrastive`: log p(produced) - log p(alternative) at one position, and the gradient x input of that difference.
- `value_zeroing` (Mohebbi et al. 2023): how far each decoder layer's output moves when one token's value vectors
  are zeroed in that layer's cross-attention (source) or self-attention (prefix); the corrupted passes run batched.
- `alti_plus` (Ferrando et al. 2022, arXiv 2205.11631): the share of each output token's representation that comes
  from each source token and each prefix token, rolled out through the encoder, then the decoder.
- `token_confidence`: probability and entropy of each output token.

Conventions, stated once:
- One row per call: input_ids (S,) or (1, S); attention_mask the same, or None for all ones; target_ids (T,) or
  (1, T): the output without the decoder start token, as generated (usually ending in eos); None generates it
  greedily with the model's decoding defaults.
- Output position i is target_ids[i], which the decoder predicts at position i from the decoder inputs 0..i =
  [start, target[0], ..., target[i-1]]. The prefix axis holds those T decoder-input positions (0 is the start
  token); a prefix score at j > i is 0.
- Scores come back as float32 CPU tensors, rows = output positions: source (P, S), prefix (P, T), where P is all T
  positions unless `positions` narrows the gradient methods to some.
- The attributed quantity of the gradient methods is log p(target[i]) (log-softmax of the logits, fp32).
- The model runs in eval mode (no dropout) during a call and is put back as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .modeling import StackContext, padding_mask, shift_right

MAX_IG_STEPS = 256        # the most integrated-gradients steps one call accepts (a deployment may pass a lower cap)
DEFAULT_IG_STEPS = 16
IG_BATCH = 16             # interpolation points per forward pass: the activations of that many copies are held
VZ_CHUNK = 8192           # corrupted (token, position) states per batched layer evaluation in value zeroing
VZ_THRESHOLD = 1e-5       # value-zeroing distances below this count as 0 (inseq's min_score_threshold)
ALTI_CHUNK = 1 << 24      # elements of the (query, key, d_model) ALTI vectors held at once
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
CONTRAST_MODES = ("first_token", "continuation")
WORD_START = "\u2581"     # SentencePiece's word-start mark


# ------------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Attribution:
    """One explanation of an output: rows are output positions, columns source tokens or prefix positions.

    method: its name in METHODS. target_ids (T,): the output explained. positions (P,) long: the rows.
    source (P, S) and prefix (P, T) float32 scores (prefix 0 at j > i).
    score (P,): the attributed quantity, log p(target[i]) (gradient methods), else None.
    delta (P,): integrated gradients' convergence delta, sum of all scores - (score at the input - score at the
    baseline); small against the score's change when the steps were enough. None for other methods.
    source_layers (L, P, S), prefix_layers (L, P, T): value zeroing per decoder layer; None for other methods.
    """
    method: str
    target_ids: torch.Tensor
    positions: torch.Tensor
    source: torch.Tensor
    prefix: torch.Tensor
    score: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    source_layers: torch.Tensor | None = None
    prefix_layers: torch.Tensor | None = None

    @property
    def source_share(self) -> torch.Tensor:
        """(P,) the part of each row's total on the source (ALTI+: the rest comes from the prefix)."""
        return self.source.sum(-1)

    def as_dict(self) -> dict:
        """Plain lists for JSON; None fields left out."""
        out = {"method": self.method, "target_ids": self.target_ids.tolist(), "positions": self.positions.tolist()}
        for name in ("source", "prefix", "score", "delta", "source_layers", "prefix_layers"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.tolist()
        return out


@dataclass
class Contrast:
    """Why the produced token(s) and not the alternative, at output position `position`.

    mode: "first_token" (the produced token against the alternative's first token) or "continuation" (the
    produced word's tokens against all the alternative's tokens, each scored after the prefix as a continuation).
    produced_logprob, alternative_logprob: summed log-probabilities (nats). source (S,), prefix (T,) float32:
    gradient x input of the difference, produced - alternative (prefix 0 after `position`).
    """
    position: int
    mode: str
    produced_ids: list[int]
    alternative_ids: list[int]
    produced_logprob: float
    alternative_logprob: float
    source: torch.Tensor
    prefix: torch.Tensor

    @property
    def difference(self) -> float:
        """log p(produced) - log p(alternative): positive when the model prefers what it produced."""
        return self.produced_logprob - self.alternative_logprob

    def as_dict(self) -> dict:
        return {"method": "contrastive", "position": self.position, "mode": self.mode,
                "produced_ids": self.produced_ids, "alternative_ids": self.alternative_ids,
                "produced_logprob": self.produced_logprob, "alternative_logprob": self.alternative_logprob,
                "difference": self.difference, "source": self.source.tolist(), "prefix": self.prefix.tolist()}


@dataclass
class Confidence:
    """The model's confidence in each output token: target_ids (T,); probability (T,), logprob (T,) and entropy
    (T,) of the next-token distribution, in nats; float32."""
    target_ids: torch.Tensor
    probability: torch.Tensor
    logprob: torch.Tensor
    entropy: torch.Tensor

    def as_dict(self) -> dict:
        return {"method": "confidence", "target_ids": self.target_ids.tolist(),
                "probability": self.probability.tolist(), "logprob": self.logprob.tolist(),
                "entropy": self.entropy.tolist()}


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One validated row on the model's device: input_ids, attention_mask (1, S); target_ids and
    decoder_input_ids (1, T)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_ids: torch.Tensor
    decoder_input_ids: torch.Tensor


def one_row(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"explanations take one row at a time: {name} has shape {tuple(x.shape)}; pass (length,) "
                         "or (1, length) and call once per row")
    return x.long()


def prepare(model, input_ids, attention_mask=None, target_ids=None) -> Row:
    """Checks one row and builds its decoder inputs; generates the target when it is None."""
    device = model.device
    ids = one_row(input_ids, "input_ids").to(device)
    mask = torch.ones_like(ids) if attention_mask is None else one_row(attention_mask, "attention_mask").to(device)
    if ids.shape[1] == 0:
        raise ValueError("input_ids is empty: there is no source to explain")
    model.check_ids(ids, "input_ids", mask)
    if not mask.bool().any():
        raise ValueError("the attention mask hides every source token: at least one must be 1")
    target = generate_target(model, ids, mask) if target_ids is None else one_row(target_ids, "target_ids").to(device)
    if target.shape[1] == 0:
        raise ValueError("target_ids is empty: give the output to explain (or None to generate one)")
    model.check_ids(target, "target_ids")
    cfg = model.config
    return Row(ids, mask, target, shift_right(target, cfg.decoder_start_token_id, cfg.pad_token_id))


@torch.no_grad()
def generate_target(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **gen) -> torch.Tensor:
    """The model's own output for one row (1, T): generate() without the start token, up to its first eos."""
    seq = model.generate(input_ids, attention_mask, **gen)[0, 1:]
    eos = model.generation_config.updated(**gen).eos_ids
    ends = torch.isin(seq, torch.tensor(eos, device=seq.device)).nonzero()
    return (seq[: int(ends[0, 0]) + 1] if len(ends) else seq)[None]


def check_positions(positions: Sequence[int] | None, length: int) -> list[int]:
    """Output positions as a list, each in [0, length); None means all."""
    if positions is None:
        return list(range(length))
    out = [int(p) for p in positions]
    if not out:
        raise ValueError("no target position given: pass positions to attribute, or None for all")
    for p in out:
        if not 0 <= p < length:
            raise ValueError(f"target position {p} is out of range: the output has {length} tokens, positions "
                             f"0 to {length - 1}")
    return out


def alternative_ids(alternative: str | Sequence[int], tokenizer=None) -> list[int]:
    """The alternative as the model's token ids: a word is tokenized on its own (no `</s>`), so it starts with the
    word-start mark as a new word does; ids are taken as given."""
    if isinstance(alternative, str):
        word = alternative.strip()
        if not word:
            raise ValueError("the alternative is empty: type the word the model could have written instead")
        if tokenizer is None:
            raise ValueError("a typed alternative needs the model's tokenizer: pass tokenizer=")
        ids = [int(i) for i in tokenizer.encode(word, add_special_tokens=False)]
        if not ids or not tokenizer.decode(ids, skip_special_tokens=True).strip():
            raise ValueError(f"the alternative {alternative!r} tokenizes to nothing with this model's tokenizer: "
                             "type a word with letters the model can write")
        return ids
    ids = [int(i) for i in alternative]
    if not ids:
        raise ValueError("the alternative is empty: give at least one token id")
    return ids


@contextmanager
def evaluating(model):
    """Dropout off for the call; the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------------------
# Gradient methods
# ------------------------------------------------------------------------------------------------------------
def target_logprobs(model, row: Row, source: torch.Tensor, prefix: torch.Tensor, positions: list[int]):
    """log p(target[i]) at `positions` (B, P) from embeddings: source (B, S, D), prefix (B, T, D).

    The decoder runs only up to the last position asked for: later ones cannot change these."""
    mask = row.attention_mask.expand(source.shape[0], -1)
    states = model.encode_embeds(source, mask).last_hidden_state
    states = model.decode_embeds(prefix[:, : max(positions) + 1], states, mask).last_hidden_state
    return head_logprobs(model, states[:, positions], row.target_ids[0, positions])


def head_logprobs(model, states: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target) (B, P) from decoder states (B, P, D), ready for one backward pass per position.

    The output matrix (V, D) is most of mT5's weights, and autograd would multiply all P rows of it again in every
    position's backward pass (all but one row zero). So the head's gradients for all positions are taken here in
    one product, and what is returned is a stand-in with the same value and the same gradient with respect to
    `states` (exact to first order: all that the gradient methods use)."""
    wanted = target.expand(states.shape[0], -1)[..., None]
    if not torch.is_grad_enabled():
        return model.logits(states).float().log_softmax(-1).gather(-1, wanted)[..., 0]
    detached = states.detach().requires_grad_()
    logp = model.logits(detached).float().log_softmax(-1).gather(-1, wanted)[..., 0]
    grad = torch.autograd.grad(logp.sum(), detached)[0]   # rows are independent: each is its own position's
    return logp.detach() + ((states - detached.detach()).float() * grad.float()).sum(-1)


def embeddings(model, row: Row) -> tuple[torch.Tensor, torch.Tensor]:
    """The source (1, S, D) and prefix (1, T, D) embeddings, detached: the inputs the scores are attributed to."""
    return model.shared(row.input_ids).detach(), model.shared(row.decoder_input_ids).detach()


def input_gradients(model, row: Row, positions: list[int]):
    """Per position, the gradient of log p(target[i]) with respect to the source and prefix embeddings.

    One forward pass, one backward pass per position. Returns source (S, D), prefix (T, D), their gradients
    (P, S, D), (P, T, D) and log p (P,)."""
    source, prefix = (e.requires_grad_() for e in embeddings(model, row))
    with torch.enable_grad():
        logp = target_logprobs(model, row, source, prefix, positions)[0]
        grads = [torch.autograd.grad(logp[k], (source, prefix), retain_graph=k + 1 < len(positions))
                 for k in range(len(positions))]
    return (source[0].detach(), prefix[0].detach(), torch.stack([g[0][0] for g in grads]),
            torch.stack([g[1][0] for g in grads]), logp.detach())


def causal(scores: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Prefix scores (P, T) with the positions a row cannot see (j > i) set to 0."""
    j = torch.arange(scores.shape[1], device=scores.device)
    return scores * (j[None, :] <= torch.tensor(positions, device=scores.device)[:, None])


def gradient_attribution(method: str, model, input_ids, attention_mask, target_ids, positions) -> Attribution:
    with evaluating(model):
        row = prepare(model, input_ids, attention_mask, target_ids)
        pos = check_positions(positions, row.target_ids.shape[1])
        source, prefix, g_source, g_prefix, logp = input_gradients(model, row, pos)
    if method == "saliency":
        s, p = g_source.float().norm(dim=-1), g_prefix.float().norm(dim=-1)
    else:
        s, p = (g_source * source).float().sum(-1), (g_prefix * prefix).float().sum(-1)
    return Attribution(method, row.target_ids[0].cpu(), torch.tensor(pos), s.cpu(), causal(p, pos).cpu(),
                       score=logp.cpu())


def gradient_x_input(model, input_ids, attention_mask=None, target_ids=None,
                     positions: Sequence[int] | None = None) -> Attribution:
    """Gradient x input: for each output position i and input token j, sum over the embedding dimensions of
    d log p(target[i]) / d e_j * e_j. Source (P, S), prefix (P, T); `score` holds log p(target[i])."""
    return gradient_attribution("gradient_x_input", model, input_ids, attention_mask, target_ids, positions)


def saliency(model, input_ids, attention_mask=None, target_ids=None,
             positions: Sequence[int] | None = None) -> Attribution:
    """Saliency: the L2 norm of d log p(target[i]) / d e_j over the embedding dimensions (>= 0; says how sensitive
    the output token is to token j, not in which direction). Source (P, S), prefix (P, T)."""
    return gradient_attribution("saliency", model, input_ids, attention_mask, target_ids, positions)


def ig_coefficients(steps: int, method: str = "gausslegendre",
                    max_steps: int = MAX_IG_STEPS) -> tuple[list[float], list[float]]:
    """Points on the path (alphas in [0, 1]) and their weights, as Captum's approximation methods compute them."""
    if method not in IG_METHODS:
        raise ValueError(f"unknown integration method {method!r}: use one of {', '.join(IG_METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"integrated gradients needs a whole number of steps >= 1, got {steps!r}")
    if steps > max_steps:
        raise ValueError(f"integrated gradients with {steps} steps is over the limit of {max_steps} here: use "
                         "fewer steps (16-64 usually suffice; the convergence delta tells whether they did)")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
    if steps < 2:
        raise ValueError(f"{method} needs at least 2 steps")
    weights = [1 / steps] * steps
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    start, end = {"riemann_left": (0, 1 - 1 / steps), "riemann_right": (1 / steps, 1),
                  "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)), "riemann_trapezoid": (0, 1)}[method]
    return torch.linspace(start, end, steps).tolist(), weights


def integrated_gradients(model, input_ids, attention_mask=None, target_ids=None,
                         positions: Sequence[int] | None = None, steps: int = DEFAULT_IG_STEPS,
                         method: str = "gausslegendre", baseline_token: int | None = None,
                         batch_size: int = IG_BATCH, max_steps: int = MAX_IG_STEPS,
                         progress: Callable[[int, int], None] | None = None) -> Attribution:
    """Integrated gradients of log p(target[i]) on the straight path from the baseline embeddings to the real ones
    (source and prefix together): Captum's IntegratedGradients with its defaults.

    Baseline: zero embeddings (Captum's default), or with `baseline_token` that token's embedding at every
    position (inseq's default baseline is <unk>'s). On T5-family models the zero baseline is a hard integral:
    the first RMSNorm divides by sqrt(mean(e^2) + 1e-6), so the model's output swings within alpha ~1e-3 of the
    zero end, which a few dozen nodes do not resolve; `delta` shows it, and a token baseline avoids it.
    riemann_left and riemann_trapezoid evaluate the gradient at alpha = 0 itself.

    The `steps` interpolation points run `batch_size` at a time as one batch: each batch is one forward pass and
    one backward pass per position. Scores are summed over the embedding dimensions, so a row adds up to
    log p(input) - log p(baseline) but for `delta` (P,). `score` is log p(target[i]) at the input.
    `progress(done, steps)` is called after each batch (it may raise to cancel). Source (P, S), prefix (P, T)."""
    alphas, weights = ig_coefficients(steps, method, max_steps)
    with evaluating(model):
        row = prepare(model, input_ids, attention_mask, target_ids)
        pos = check_positions(positions, row.target_ids.shape[1])
        source, prefix = embeddings(model, row)
        if baseline_token is None:
            base_s, base_p = torch.zeros_like(source), torch.zeros_like(prefix)
        else:
            model.check_ids(torch.tensor([[baseline_token]]), "baseline_token")
            base = model.shared(torch.tensor([[baseline_token]], device=source.device)).detach()
            base_s, base_p = base.expand_as(source), base.expand_as(prefix)
        total_s = torch.zeros(len(pos), *source.shape[1:], device=source.device)
        total_p = torch.zeros(len(pos), *prefix.shape[1:], device=prefix.device)
        for start in range(0, steps, batch_size):
            a = torch.tensor(alphas[start:start + batch_size], dtype=source.dtype, device=source.device)[:, None, None]
            w = torch.tensor(weights[start:start + batch_size], device=source.device)[:, None, None]
            s = (base_s + a * (source - base_s)).requires_grad_()
            p = (base_p + a * (prefix - base_p)).requires_grad_()
            with torch.enable_grad():
                logp = target_logprobs(model, row, s, p, pos)
                for k in range(len(pos)):
                    gs, gp = torch.autograd.grad(logp[:, k].sum(), (s, p), retain_graph=k + 1 < len(pos))
                    total_s[k] += (w * gs.float()).sum(0)
                    total_p[k] += (w * gp.float()).sum(0)
            if progress is not None:
                progress(min(start + batch_size, steps), steps)
        attr_s, attr_p = total_s * (source - base_s)[0].float(), total_p * (prefix - base_p)[0].float()
        with torch.no_grad():
            ends = target_logprobs(model, row, torch.cat([source, base_s]), torch.cat([prefix, base_p]), pos)
    delta = attr_s.sum((1, 2)) + attr_p.sum((1, 2)) - (ends[0] - ends[1])
    return Attribution("integrated_gradients", row.target_ids[0].cpu(), torch.tensor(pos), attr_s.sum(-1).cpu(),
                       causal(attr_p.sum(-1), pos).cpu(), score=ends[0].cpu(), delta=delta.cpu())


# ------------------------------------------------------------------------------------------------------------
# Contrastive
# ------------------------------------------------------------------------------------------------------------
def word_end(tokenizer, target: list[int], position: int) -> int:
    """End (exclusive) of the word the token at `position` begins: the next token that starts a word, is special,
    or the end of the output."""
    pieces = tokenizer.convert_ids_to_tokens(target)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    end = position + 1
    while end < len(target) and not pieces[end].startswith(WORD_START) and target[end] not in special:
        end += 1
    return end


def contrastive(model, input_ids, attention_mask, target_ids, position: int, alternative: str | Sequence[int],
                tokenizer=None, mode: str = "first_token") -> Contrast:
    """log p(produced) - log p(alternative) at output `position`, and its gradient x input.

    `alternative` is a word (tokenized with `tokenizer` on its own, as a new word: it starts with the word-start
    mark) or token ids. mode "first_token" compares target[position] with the alternative's first token, both
    read from the same next-token distribution; "continuation" compares the produced word (target[position] up to
    the next token that starts a word; only that token without a tokenizer) with all the alternative's tokens,
    each sequence scored token by token after the prefix. Source (S,), prefix (T,)."""
    if mode not in CONTRAST_MODES:
        raise ValueError(f"unknown contrast mode {mode!r}: use one of {', '.join(CONTRAST_MODES)}")
    alt = alternative_ids(alternative, tokenizer)
    with evaluating(model):
        row = prepare(model, input_ids, attention_mask, target_ids)
        target = row.target_ids[0].tolist()
        i = check_positions([position], len(target))[0]
        model.check_ids(torch.tensor([alt]), "the alternative's ids")
        if mode == "first_token":
            produced, alt = target[i:i + 1], alt[:1]
        else:
            produced = target[i:word_end(tokenizer, target, i) if tokenizer is not None else i + 1]
        source, prefix = embeddings(model, row)
        source.requires_grad_()
        head = prefix[:, : i + 1].requires_grad_()
        with torch.enable_grad():
            scores = continuation_logprobs(model, row, source, head, [produced, alt])
            g_source, g_head = torch.autograd.grad(scores[0] - scores[1], (source, head))
    prefix_scores = torch.zeros(len(target))
    prefix_scores[: i + 1] = (g_head * head).float().sum(-1)[0].detach().cpu()
    return Contrast(i, mode, produced, alt, float(scores[0].detach()), float(scores[1].detach()),
                    (g_source * source).float().sum(-1)[0].detach().cpu(), prefix_scores)


def continuation_logprobs(model, row: Row, source: torch.Tensor, head: torch.Tensor,
                          continuations: list[list[int]]) -> torch.Tensor:
    """Summed log p of each continuation (N,) after the prefix embeddings `head` (1, i+1, D), from the source
    embeddings (1, S, D): one encoder pass, one decoder batch (right-padded; causal, so padding changes nothing)."""
    states = model.encode_embeds(source, row.attention_mask).last_hidden_state
    width = head.shape[1] + max(len(c) for c in continuations) - 1
    rows = []
    for c in continuations:
        extra = model.shared(torch.tensor([c[:-1]], dtype=torch.long, device=head.device)).detach()
        padding = head.new_zeros(1, width - head.shape[1] - extra.shape[1], head.shape[2])
        rows.append(torch.cat([head, extra, padding], 1))
    n = len(continuations)
    out = model.decode_embeds(torch.cat(rows), states.expand(n, -1, -1), row.attention_mask.expand(n, -1))
    logp = model.logits(out.last_hidden_state).float().log_softmax(-1)
    first = head.shape[1] - 1
    return torch.stack([logp[r, first + torch.arange(len(c), device=logp.device), torch.tensor(c, device=logp.device)]
                        .sum() for r, c in enumerate(continuations)])


# ------------------------------------------------------------------------------------------------------------
# The clean pass, decomposed per attention sub-layer (value zeroing and ALTI+)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Mixing:
    """One attention sub-layer of the clean pass (batch row 0, float32), in ALTI's terms: `residual` (Q, D) the
    stream it adds to; `weights` (H, Q, K); `values` (H, K, D) each key's value vector through the output
    projection, per head, so that output = residual + sum_h weights[h] @ values[h]; `output` (Q, D)."""
    residual: torch.Tensor
    weights: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor


@dataclass
class Trace:
    """The clean teacher-forced pass: per encoder layer its self-attention; per decoder layer its self- and
    cross-attention and its output (T, D) (the last after the final norm, as the model's hidden states have it)."""
    encoder: list[Mixing]
    decoder_self: list[Mixing]
    decoder_cross: list[Mixing]
    decoder_out: list[torch.Tensor]
    encoder_states: torch.Tensor   # (1, S, D) the encoder output, model dtype


def value_vectors(attn, x: torch.Tensor) -> torch.Tensor:
    """x (N, D) the attention's key/value input -> (H, N, D): each position's value vector through the output
    projection, one head at a time (the other heads' slots zeroed), so it works for any `o` module."""
    v = attn.v(x).view(x.shape[0], attn.num_heads, attn.d_kv)
    eye = torch.eye(attn.num_heads, dtype=v.dtype, device=v.device)
    per_head = (v[None] * eye[:, None, :, None]).reshape(attn.num_heads, x.shape[0], -1)
    return attn.o(per_head).float()


def mixing(attn, residual: torch.Tensor, kv_input: torch.Tensor, weights: torch.Tensor) -> Mixing:
    """The Mixing of attention `attn` with weights (H, Q, K) over kv_input (K, D), added to residual (Q, D)."""
    values = value_vectors(attn, kv_input)
    weights = weights.float()
    residual = residual.float()
    return Mixing(residual, weights, values, residual + torch.bmm(weights, values).sum(0))


def key_terms(m: Mixing, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(len(keys), len(queries), D): what key j adds to query i's output, sum_h weights[h, i, j] values[h, j].

    A batched matmul over keys with the heads as the inner dimension (an einsum over the same indices is ~40x
    slower on CPU: it does not find this layout)."""
    w = m.weights[:, queries][:, :, keys].permute(2, 1, 0).contiguous()      # (K, Q, H)
    return torch.bmm(w, m.values[:, keys].transpose(0, 1).contiguous())     # (K, H, D) -> (K, Q, D)


def trace(model, row: Row) -> Trace:
    """Runs the model once with attention weights and hidden states and decomposes every attention sub-layer."""
    enc, dec, _ = model.run(input_ids=row.input_ids, attention_mask=row.attention_mask,
                            decoder_input_ids=row.decoder_input_ids, use_cache=False, output_attentions=True,
                            output_hidden_states=True)
    encoder = []
    for i, block in enumerate(model.encoder.block):
        sa, x = block.layer[0], enc.hidden_states[i][0]
        encoder.append(mixing(sa.SelfAttention, x, sa.layer_norm(x), enc.attentions[i][0]))
    states = enc.last_hidden_state
    decoder_self, decoder_cross = [], []
    for i, block in enumerate(model.decoder.block):
        sa, ca, x = block.layer[0], block.layer[1], dec.hidden_states[i][0]
        decoder_self.append(mixing(sa.SelfAttention, x, sa.layer_norm(x), dec.attentions[i][0]))
        decoder_cross.append(mixing(ca.EncDecAttention, decoder_self[-1].output, states[0],
                                    dec.cross_attentions[i][0]))
    outputs = [h[0].float() for h in dec.hidden_states[1:]]
    return Trace(encoder, decoder_self, decoder_cross, outputs, states)


# ------------------------------------------------------------------------------------------------------------
# Value zeroing
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def value_zeroing(model, input_ids, attention_mask=None, target_ids=None, chunk: int = VZ_CHUNK,
                  progress: Callable[[int, int], None] | None = None) -> Attribution:
    """Value zeroing (Mohebbi et al. 2023) as inseq computes it for encoder-decoders.

    For decoder layer l and token j: zero token j's value vectors in l's cross-attention (a source token) or
    self-attention (a prefix token), run layer l on its clean input, and score each output position by the cosine
    distance between its corrupted and clean layer output (the last layer's after the final norm). Distances below
    VZ_THRESHOLD count as 0; each row is normalized to sum to 1 per layer, separately for source and prefix (two
    distributions, unlike ALTI+'s one budget); masked-out source tokens score 0.

    Each layer reads its clean input, so the n corrupted passes need not run the whole model n times: per layer,
    the corrupted states of all (token, position) pairs are built from the clean pass's attention weights and
    value vectors, then go through the rest of the layer as one batch (`chunk` states at a time; prefix pairs only
    where j <= i, source pairs only for unmasked tokens). `progress(done, layers)` after each layer.

    source_layers (L, T, S), prefix_layers (L, T, T); source, prefix: their mean over the layers (inseq's default
    aggregation).
    """
    with evaluating(model):
        row = prepare(model, input_ids, attention_mask, target_ids)
        t = trace(model, row)
        dtype = t.encoder_states.dtype
        ctx = StackContext(encoder_states=t.encoder_states, encoder_mask=padding_mask(row.attention_mask, dtype))
        length = row.target_ids.shape[1]
        live = row.attention_mask[0].bool()[:, None].expand(-1, length)       # (S, T): unmasked source tokens
        j = torch.arange(length, device=live.device)
        seen = j[:, None] <= j[None, :]                                        # (T, T): prefix j seen from i
        blocks = model.decoder.block
        source_layers, prefix_layers = [], []
        for layer, block in enumerate(blocks):
            finish = layer_finish(model, block, last=layer == len(blocks) - 1)

            def cross_then_finish(h, block=block, layer=layer, finish=finish):
                return finish(block.cross_attend(h, ctx, layer)[0])

            clean = t.decoder_out[layer]
            # a source token zeroed in the cross-attention: the state before the feed-forward loses its term
            source_layers.append(zeroed_distances(t.decoder_cross[layer], clean, live, finish, chunk, dtype))
            # a prefix token zeroed in the self-attention: the cross-attention then reads the changed state
            prefix_layers.append(zeroed_distances(t.decoder_self[layer], clean, seen, cross_then_finish, chunk,
                                                  dtype))
            if progress is not None:
                progress(layer + 1, len(blocks))
    src, pre = normalized(torch.stack(source_layers)), normalized(torch.stack(prefix_layers))
    return Attribution("value_zeroing", row.target_ids[0].cpu(), torch.arange(length), src.mean(0), pre.mean(0),
                       source_layers=src, prefix_layers=pre)


def layer_finish(model, block, last: bool):
    """The rest of a decoder layer after its attention: the feed-forward sub-layer (and, for the last layer, the
    decoder's final norm and dropout). Takes and returns (1, N, D)."""
    stack = model.decoder

    def finish(h: torch.Tensor) -> torch.Tensor:
        h = block.layer[-1](h)
        return stack.dropout(stack.final_layer_norm(h)) if last else h
    return finish


def zeroed_distances(m: Mixing, clean: torch.Tensor, keep: torch.Tensor, rest: Callable, chunk: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """Cosine distances (T, K) between the clean layer outputs `clean` (T, D) and the outputs with key j's value
    vectors zeroed in sub-layer `m`, for the pairs where keep (K, T) is true (0 elsewhere). `rest` takes the
    sub-layer's corrupted outputs (1, N, D), one per pair, through the rest of the layer: one call per chunk."""
    num_keys, length = keep.shape
    out = torch.zeros(length, num_keys, device=clean.device)
    per_chunk = max(1, chunk // length)
    for start in range(0, num_keys, per_chunk):
        js = torch.arange(start, min(start + per_chunk, num_keys), device=clean.device)
        pairs = keep[js].nonzero()                                       # (N, 2): (index into js, position i)
        if not len(pairs):
            continue
        lost = key_terms(m, torch.arange(length, device=js.device), js)          # (c, T, D): j's term at i
        corrupted = (m.output[None] - lost)[pairs[:, 0], pairs[:, 1]]
        layer_out = rest(corrupted[None].to(dtype))[0]
        i, j = pairs[:, 1], js[pairs[:, 0]]
        # in fp64: the distances are small differences of numbers near 1, and rows are normalized by their sum
        out[i, j] = (1 - F.cosine_similarity(layer_out.double(), clean[i].double(), dim=-1)).float()
    return out.cpu()


def normalized(distances: torch.Tensor) -> torch.Tensor:
    """Value-zeroing distances (..., T, K) -> shares: below VZ_THRESHOLD counts as 0; each row sums to 1 (a row
    of zeros stays 0)."""
    distances = torch.where(distances < VZ_THRESHOLD, 0.0, distances)
    total = distances.sum(-1, keepdim=True)
    return distances / torch.where(total == 0, 1.0, total)


# ------------------------------------------------------------------------------------------------------------
# ALTI+
# ------------------------------------------------------------------------------------------------------------
def alti_contributions(m: Mixing, self_attention: bool) -> torch.Tensor:
    """ALTI's contributions of one attention sub-layer, rows summing to 1: (Q, K) for a self-attention, whose
    residual belongs to the query's own token; (Q, K + 1) for a cross-attention, whose residual (the decoder's
    own stream) is the last column.

    With T_i(x_j) = sum_h weights[h, i, j] values[h, j] (+ the residual when j is i's own slot) and
    y_i = sum_j T_i(x_j) the sub-layer's output: c_ij = max(0, |y_i|_1 - |y_i - T_i(x_j)|_1) / sum_j (same).
    T5 blocks are pre-norm without biases, so the decomposition is exact: the norm acts on each token alone."""
    queries, keys = m.weights.shape[1:]
    device = m.output.device
    columns = keys if self_attention else keys + 1
    out = torch.empty(queries, columns, device=device)
    per_chunk = max(1, ALTI_CHUNK // (columns * m.values.shape[-1]))
    for start in range(0, queries, per_chunk):
        qs = torch.arange(start, min(start + per_chunk, queries), device=device)
        vectors = key_terms(m, qs, torch.arange(keys, device=device))             # (K, c, D)
        if self_attention:
            vectors[qs, qs - start] += m.residual[qs]
        else:
            vectors = torch.cat([vectors, m.residual[None, qs]])
        y = m.output[qs]
        c = (y.abs().sum(-1) - vectors.sub_(y).abs_().sum(-1)).clamp_min(0).T   # (c, columns): |y - T|_1
        out[qs] = c / c.sum(-1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    return out


@torch.no_grad()
def alti_plus(model, input_ids, attention_mask=None, target_ids=None) -> Attribution:
    """ALTI+ (Ferrando et al. 2022): how much of each output position's final representation comes from each
    source token and each prefix token, through all layers.

    Encoder: ALTI per layer, rolled out by matrix products (S, S). Decoder layer l: ALTI of the self-attention
    over the prefix (T, T) and of the cross-attention over the encoder outputs plus the residual (T, S + 1);
    the self-attention's contributions are scaled by the residual's share, the encoder outputs' by the encoder
    rollout, and both compose with the previous layers' rollout. The feed-forward and the norms act on one token
    at a time and are not modelled, as in the paper. source (T, S) + prefix (T, T) rows sum to 1;
    `source_share` is the source's part."""
    with evaluating(model):
        row = prepare(model, input_ids, attention_mask, target_ids)
        t = trace(model, row)
    encoder = None
    for m in t.encoder:
        c = alti_contributions(m, self_attention=True)
        encoder = c if encoder is None else c @ encoder
    num_source, length = encoder.shape[0], row.target_ids.shape[1]
    source = torch.zeros(length, num_source, device=encoder.device)
    prefix = torch.eye(length, device=encoder.device)   # the decoder's input: each position is its own token
    for self_m, cross_m in zip(t.decoder_self, t.decoder_cross):
        cross = alti_contributions(cross_m, self_attention=False)
        mixed = cross[:, num_source:] * alti_contributions(self_m, self_attention=True)
        source = cross[:, :num_source] @ encoder + mixed @ source
        prefix = mixed @ prefix
        total = source.sum(-1, keepdim=True) + prefix.sum(-1, keepdim=True)
        source, prefix = source / total, prefix / total
    return Attribution("alti_plus", row.target_ids[0].cpu(), torch.arange(length), source.cpu(), prefix.cpu())


# ------------------------------------------------------------------------------------------------------------
# Confidence
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def token_confidence(model, input_ids, attention_mask=None, target_ids=None) -> Confidence:
    """Probability, log-probability and entropy (nats) of each output token, teacher-forced: one forward pass."""
    with evaluating(model):
        row = prepare(model, input_ids, attention_mask, target_ids)
        _, dec, _ = model.run(input_ids=row.input_ids, attention_mask=row.attention_mask,
                              decoder_input_ids=row.decoder_input_ids, use_cache=False)
        logp = model.logits(dec.last_hidden_state)[0].float().log_softmax(-1)
    chosen = logp.gather(-1, row.target_ids[0, :, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    return Confidence(row.target_ids[0].cpu(), chosen.exp().cpu(), chosen.cpu(), entropy.cpu())


# ------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """An explanation method: its name, the question it answers, and its function."""
    name: str
    question: str
    run: Callable


METHODS = {m.name: m for m in (
    Method("gradient_x_input", "Which input tokens pushed this output token up, and which down?", gradient_x_input),
    Method("saliency", "How sensitive is this output token to each input token?", saliency),
    Method("integrated_gradients", "How much of this output token's log-probability does each input token "
           "account for?", integrated_gradients),
    Method("contrastive", "Why this token and not the one I expected?", contrastive),
    Method("value_zeroing", "Which input tokens does each layer mix into this output token?", value_zeroing),
    Method("alti_plus", "How much of this output token comes from the source, and from which words, versus the "
           "output so far?", alti_plus),
    Method("confidence", "How sure was the model of each output token?", token_confidence),
)}
