"""Generation over one decoder `step()`: greedy, sampling and beam search as plain functions.

The encoder runs once. The decoder's self-attention K/V grow in a cache, cross-attention K/V are computed once,
relative-bias rows are computed only for the new position, and beam search reorders only the filled part of the
self-attention cache. Argument names, defaults and results follow transformers 4.57's `generate()`, so the same
settings give the same tokens, and `return_dict_in_generate=True` gives its output classes, field for field.

Compatibility is translated at the edge (`generate`, `run_encoder`, `decoder_prompt`): what is only for the dict
output (attentions, hidden states, raw logits, beam indices) is computed only when asked for, so the fast paths
(the int8 screen, MKL-packed beams) run unchanged otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .config import DEFAULT_MAX_LENGTH, MAX_NEW_TOKENS_LIMIT, GenerationConfig  # noqa: F401 (the limit is read here too)
from .beam_screen import (REAL, BeamScreen, RowCandidates, Uncertified, along, decided_order, improvable_decided,
                          path_uncertainty)
from .fast_head import FastHead, log_normalizer  # noqa: F401 (log_normalizer is read from here too)
from .modeling import KVCache, StackContext, StackOutput, as_stack_output, causal_mask, padding_mask

NEG_INF = float("-inf")
# transformers' `prefix_allowed_tokens_fn(batch_id, decoder ids so far (L,)) -> allowed next token ids`
PrefixFn = Callable[[int, torch.Tensor], list[int]]


class OutputFields:
    """transformers' ModelOutput reading: `out.name`, `out["name"]`, `out[i]` / `to_tuple()` / `keys()` over the
    fields that are set, in declaration order (transformers' order)."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int | slice):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __iter__(self):
        return iter(self.keys())


@dataclass
class GenerateEncoderDecoderOutput(OutputFields):
    """Greedy / sampling result (transformers' class of the same name). `sequences` (N, L) start with the decoder
    prompt; per step t: `scores[t]` processed (and, sampling, warped) (N, V), `logits[t]` raw (N, V),
    `decoder_attentions[t][layer]` (N, H, T_t, K_t), `cross_attentions[t][layer]` (N, H, T_t, S),
    `decoder_hidden_states[t][layer + 1]` (N, T_t, D) (T_t: positions fed that step, 1 once cached); encoder ones
    per layer (B, H, S, S) / (B, S, D), not repeated for return sequences."""
    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None
    cross_attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None
    decoder_hidden_states: tuple[tuple[torch.Tensor, ...], ...] | None = None
    past_key_values: KVCache | None = None


@dataclass
class GenerateBeamEncoderDecoderOutput(OutputFields):
    """Beam search result (transformers' class): as above over the B*beams running rows, plus
    `sequences_scores` (N,) (with output_scores) and `beam_indices` (N, generated) the row each token came from."""
    sequences: torch.Tensor
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.Tensor | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None
    cross_attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None
    decoder_hidden_states: tuple[tuple[torch.Tensor, ...], ...] | None = None
    past_key_values: KVCache | None = None


GenerateOutput = GenerateEncoderDecoderOutput | GenerateBeamEncoderDecoderOutput


@dataclass
class StepRecord:
    """What the dict output asked to keep from each decoder step (nothing is computed for it otherwise)."""
    attentions: bool = False
    hidden_states: bool = False
    logits: bool = False
    decoder_attentions: list = field(default_factory=list)
    cross_attentions: list = field(default_factory=list)
    decoder_hidden_states: list = field(default_factory=list)
    raw_logits: list = field(default_factory=list)

    def fields(self) -> dict[str, tuple | None]:
        """The per-step fields of the output classes."""
        return dict(logits=tuple(self.raw_logits) if self.logits else None,
                    decoder_attentions=tuple(self.decoder_attentions) if self.attentions else None,
                    cross_attentions=tuple(self.cross_attentions) if self.attentions else None,
                    decoder_hidden_states=tuple(self.decoder_hidden_states) if self.hidden_states else None)


# ------------------------------------------------------------------------------------------------------------
# The decoder step
# ------------------------------------------------------------------------------------------------------------
@dataclass
class DecoderState:
    """Everything one decoding run keeps between steps."""
    model: Any
    encoder_states: torch.Tensor           # (N, S, D)
    encoder_mask: torch.Tensor | None      # (N, 1, 1, S) additive
    head: FastHead | None = None           # the output projection: logits, or the greedy argmax
    allowed: "PrefixMask | None" = None     # prefix_allowed_tokens_fn, when given
    use_cache: bool = True                 # False: every step decodes the whole sequence again
    record: StepRecord | None = None       # what the dict output keeps per step
    cache: KVCache = field(init=False)

    def __post_init__(self):
        self.cache = KVCache(len(self.model.decoder.block))
        if self.head is None:
            self.head = FastHead.for_model(self.model)

    @torch.no_grad()
    def states(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (N, L) the decoder tokens so far -> decoder states (N, D) at the last position.

        Only the tokens after the cached ones are fed: the whole prompt at the first step, then one token."""
        if not self.use_cache:
            self.cache = KVCache(len(self.model.decoder.block))
        new = seqs[:, self.cache.get_seq_length():]
        if self.record is None or not (self.record.attentions or self.record.hidden_states):
            return self.model.decode_step(new, self.encoder_states, self.encoder_mask, self.cache)[:, -1, :]
        out = self.decode_with_outputs(new)
        if self.record.attentions:
            self.record.decoder_attentions.append(out.attentions)
            self.record.cross_attentions.append(out.cross_attentions)
        if self.record.hidden_states:
            self.record.decoder_hidden_states.append(out.hidden_states)
        return out.last_hidden_state[:, -1, :]

    def decode_with_outputs(self, new: torch.Tensor) -> StackOutput:
        """decode_step with attention weights / hidden states: new (N, T) after the cached positions."""
        past, n = self.cache.get_seq_length(), new.shape[1]
        positions = torch.arange(past, past + n, device=new.device)
        mask = causal_mask(positions, past + n, None, new.shape[0], self.encoder_states.dtype) \
            if n > 1 else None
        ctx = StackContext(cache=self.cache, encoder_states=self.encoder_states, encoder_mask=self.encoder_mask,
                           need_weights=self.record.attentions)
        return self.model.decoder(self.model.shared(new), mask, positions, ctx, self.record.hidden_states)

    def restart(self) -> None:
        """Back to before the first decoder step (an exact rerun of a search): an empty cache and records."""
        self.cache = KVCache(len(self.model.decoder.block))
        if self.record is not None:
            for kept in (self.record.decoder_attentions, self.record.cross_attentions,
                         self.record.decoder_hidden_states, self.record.raw_logits):
                kept.clear()

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keeps only decoder rows `index` (n',): the cache (cross-attention too), encoder states and mask."""
        self.cache.reorder(index, cross=True)
        self.encoder_states = self.encoder_states.index_select(0, index)
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask.index_select(0, index)

    def step(self, seqs: torch.Tensor) -> torch.Tensor:
        """Exact next-token logits (N, V) in fp32."""
        logits = self.head.logits(self.states(seqs))
        if self.record is not None and self.record.logits:
            self.record.raw_logits.append(logits.clone())  # callers may process `logits` in place
        return logits

    def greedy(self, seqs: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
        """Next tokens (N,) by exact argmax of the processed logits."""
        states = self.states(seqs)
        if cfg.repetition_penalty != 1.0:  # it rescales scores by their sign: outside the int8 screen's bound
            return process_scores(self.head.logits(states), seqs, cfg, allowed=self.allowed).argmax(-1)
        # the prefix mask is a ban to -inf like the others, so the screen's proof still holds
        # the head hands `process` scores of its own making (approximate, or rescored rows): bans write in place
        return self.head.argmax(states, lambda scores, rows: process_scores(
            scores, seqs if rows is None else seqs[rows], cfg, inplace=True, allowed=self.allowed, rows=rows))


def encode_for_generation(model, input_ids, attention_mask, expand: int, head: FastHead | None = None,
                          allowed: "PrefixMask | None" = None, *, encoder: StackOutput | None = None,
                          use_cache: bool = True, record: StepRecord | None = None) -> DecoderState:
    """Runs the encoder once (unless its output `encoder` is given) and repeats its states for beams / return
    sequences."""
    enc = (encoder if encoder is not None else model.encode(input_ids, attention_mask)).last_hidden_state
    mask = padding_mask(attention_mask, enc.dtype) if attention_mask is not None and not bool(
        attention_mask.all()) else None
    if expand > 1:
        enc = enc.repeat_interleave(expand, dim=0)
        mask = None if mask is None else mask.repeat_interleave(expand, dim=0)
    return DecoderState(model, enc, mask, head, allowed, use_cache, record)


# ------------------------------------------------------------------------------------------------------------
# Logits processors (transformers' order: repetition, n-gram, bad words, min length, prefix_allowed_tokens_fn;
# then the sampling warpers)
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefixMask:
    """transformers' PrefixConstrainedLogitsProcessor: every token `fn(batch_id, row)` does not list gets -inf.
    Rows are grouped by `num_beams` (batch_id = row // num_beams, as transformers counts them)."""
    fn: PrefixFn
    num_beams: int = 1

    def __call__(self, scores: torch.Tensor, seqs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """scores (n, V), seqs (n, L); `rows` (n,) the run's row numbers of these rows (all rows when None)."""
        mask = torch.full_like(scores, NEG_INF)
        numbers = range(seqs.shape[0]) if rows is None else rows.tolist()
        for i, row in enumerate(numbers):
            batch_id = row // self.num_beams
            tokens = self.fn(batch_id, seqs[i])
            if len(tokens) == 0:
                raise ValueError(f"`prefix_allowed_tokens_fn` returned an empty list for batch ID {batch_id}: "
                                 "the constraint is unsatisfiable; check the function.")
            mask[i, tokens] = 0
        return scores + mask


def process_scores(scores: torch.Tensor, seqs: torch.Tensor, cfg: GenerationConfig, inplace: bool = False,
                   allowed: PrefixMask | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """scores (N, V), seqs (N, L) the decoder tokens so far (start token included); `allowed` the prefix
    constraint, `rows` which of the run's rows these are (for its batch ids; all when None).

    `inplace=True` lets the bans write into `scores` (the caller owns it), saving a copy per step."""
    if cfg.repetition_penalty != 1.0:
        seen = torch.gather(scores, 1, seqs)
        seen = torch.where(seen < 0, seen * cfg.repetition_penalty, seen / cfg.repetition_penalty)
        scores = scores.scatter(1, seqs, seen)
    if cfg.no_repeat_ngram_size > 0:
        banned = ban_repeated_ngrams(scores, seqs, cfg.no_repeat_ngram_size, inplace)
        inplace, scores = inplace or banned is not scores, banned  # a copy is ours to write into
    if cfg.bad_words_ids:
        banned = ban_bad_words(scores, seqs, cfg.bad_words_ids, cfg.eos_ids, inplace)
        inplace, scores = inplace or banned is not scores, banned
    if seqs.shape[1] < cfg.min_total_length() and cfg.eos_ids:
        scores = scores if inplace else scores.clone()
        scores[:, cfg.eos_ids] = NEG_INF
    if allowed is not None:
        scores = allowed(scores, seqs, rows)
    if cfg.remove_invalid_values:
        scores = remove_invalid_values(scores)
    return scores


def remove_invalid_values(scores: torch.Tensor) -> torch.Tensor:
    """transformers' InfNanRemoveLogitsProcessor: nan -> 0, +-inf -> the dtype's largest / smallest value."""
    info = torch.finfo(scores.dtype)
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == float("inf"), info.max, out)
    return torch.where(scores == NEG_INF, info.min, out)


def ban_repeated_ngrams(scores: torch.Tensor, seqs: torch.Tensor, n: int, inplace: bool = False) -> torch.Tensor:
    """Forbids any token that would repeat an n-gram already in the row (vectorised: every row's windows are
    matched against its last n-1 tokens at once)."""
    length = seqs.shape[1]
    if length < n:  # no complete n-gram yet
        return scores
    scores = scores if inplace else scores.clone()
    windows = seqs.unfold(1, n, 1)                                        # (N, L-n+1, n)
    prefix = seqs[:, length - n + 1:]                                     # (N, n-1)
    rows, starts = (windows[:, :, :-1] == prefix[:, None, :]).all(-1).nonzero(as_tuple=True)
    if len(rows):
        scores[rows, windows[rows, starts, -1]] = NEG_INF
    return scores


def ban_bad_words(scores: torch.Tensor, seqs: torch.Tensor, bad: list[list[int]], eos: list[int],
                  inplace: bool = False) -> torch.Tensor:
    """Forbids the last token of each banned sequence when the row ends with the rest of it."""
    bad = [b for b in bad if not (len(b) == 1 and b[0] in eos)]  # as transformers: eos alone is never banned
    scores = scores if inplace else scores.clone()
    rows = seqs.tolist()
    for words in bad:
        *prefix, last = words
        for i, row in enumerate(rows):
            if not prefix or row[len(row) - len(prefix):] == prefix:
                scores[i, last] = NEG_INF
    return scores


def warp_for_sampling(scores: torch.Tensor, cfg: GenerationConfig, keep: int = 1) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus), as transformers' warpers."""
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k:
        k = max(min(cfg.top_k, scores.shape[-1]), keep)
        kth = torch.topk(scores, k).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - cfg.top_p)
        remove[..., -keep:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)
    return scores


# ------------------------------------------------------------------------------------------------------------
# Greedy and sampling
# ------------------------------------------------------------------------------------------------------------
def start_tokens(state: DecoderState, cfg: GenerationConfig) -> torch.Tensor:
    """The default decoder prompt: the start token, (N, 1)."""
    return torch.full((state.encoder_states.shape[0], 1), cfg.decoder_start_token_id, dtype=torch.long,
                      device=state.encoder_states.device)


def keeps_scores(cfg: GenerationConfig) -> bool:
    """transformers returns (so computes) per-step scores only in the dict output."""
    return cfg.output_scores and cfg.return_dict_in_generate


def sample_steps(state: DecoderState, cfg: GenerationConfig, generator: torch.Generator | None,
                 prompt: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (next tokens (N,), processed (and, sampling, warped) scores (N, V) or None) each step until every
    row ends or the limit. `prompt` (N, P): the decoder tokens to continue (the start token by default)."""
    seqs = start_tokens(state, cfg) if prompt is None else prompt
    n, device = seqs.shape[0], seqs.device
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    eos = torch.tensor(cfg.eos_ids, device=device)
    full = cfg.do_sample or keeps_scores(cfg) or cfg.remove_invalid_values or (
        state.record is not None and state.record.logits)
    # Plain greedy decodes only the rows still running: a finished row leaves the decoder batch (cache, encoder
    # states). Not when sampling (transformers draws for every row: the random stream must stay the same), nor
    # when per-step outputs or the prefix function need every row.
    shrink = not full and state.record is None and state.allowed is None and state.use_cache
    active = torch.arange(n, device=device)   # the rows the decoder state holds, in order
    for _ in range(max(cfg.total_length(seqs.shape[1]) - seqs.shape[1], 1)):  # transformers: at least one
        scores = None
        if full:
            scores = process_scores(state.step(seqs), seqs, cfg, allowed=state.allowed)
        if cfg.do_sample:
            scores = warp_for_sampling(scores, cfg)
            tokens = torch.multinomial(F.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        elif scores is not None:
            tokens = scores.argmax(-1)
        elif len(active) < n:
            tokens = torch.full((n,), cfg.pad_token_id, dtype=seqs.dtype, device=device)
            tokens[active] = state.greedy(seqs[active], cfg)
        else:
            tokens = state.greedy(seqs, cfg)
        tokens = torch.where(unfinished, tokens, cfg.pad_token_id)
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        yield tokens, scores
        if len(eos):
            unfinished &= ~torch.isin(tokens, eos)
        if not unfinished.any():
            return
        if shrink and not bool(unfinished[active].all()):
            keep = unfinished[active].nonzero().squeeze(1)
            state.keep_rows(keep)
            active = active[keep]


def greedy_or_sample(state: DecoderState, cfg: GenerationConfig, generator: torch.Generator | None,
                     prompt: torch.Tensor | None = None) -> GenerateEncoderDecoderOutput:
    tokens, scores = [start_tokens(state, cfg) if prompt is None else prompt], []
    for step_tokens, step_scores in sample_steps(state, cfg, generator, tokens[0]):
        tokens.append(step_tokens[:, None])
        scores.append(step_scores)
    record = state.record.fields() if state.record is not None else {}
    return GenerateEncoderDecoderOutput(torch.cat(tokens, 1), tuple(scores) if keeps_scores(cfg) else None,
                                        **record)


# ------------------------------------------------------------------------------------------------------------
# Beam search (transformers 4.57's vectorised algorithm: same candidates, same finishing rule, same heuristics)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Beams:
    """Running and finished hypotheses of a batch: tensors (B, beams, ...)."""
    running: torch.Tensor          # (B, K, L) tokens
    running_scores: torch.Tensor   # (B, K) summed log-probs
    finished: torch.Tensor         # (B, K, L)
    finished_scores: torch.Tensor  # (B, K) length-penalised
    finished_lengths: torch.Tensor  # (B, K) generated tokens of each finished hypothesis
    is_finished: torch.Tensor      # (B, K) bool: slot holds a real finished hypothesis
    improvable: torch.Tensor       # (B, 1) bool: a running beam may still beat the finished ones
    prompt_len: int = 1            # decoder tokens given before the search (start token, decoder_input_ids)
    running_rows: torch.Tensor | None = None   # (B, K, L - P) int32: row of each token's parent (dict output)
    finished_rows: torch.Tensor | None = None  # (B, K, L - P)
    hits: torch.Tensor | None = None           # (B, keep) the last step's candidates that stopped


def gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Picks beams along dim 1: t (B, K, ...) with index (B, J) -> (B, J, ...)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index.expand(*index.shape[:2], *t.shape[2:]), dim=1)


def start_beams(prompt: torch.Tensor, cfg: GenerationConfig, batch: int, max_len: int, track_rows: bool) -> Beams:
    """prompt (B*K, P) -> the search's initial state; only the first beam of each input may expand at step one."""
    k, p, device = cfg.num_beams, prompt.shape[1], prompt.device
    fill = (cfg.pad_token_id or cfg.eos_ids[0]) if cfg.eos_ids else -1  # transformers' fill for ended beams
    running = torch.full((batch, k, max_len), fill, dtype=torch.long, device=device)
    running[:, :, :p] = prompt.view(batch, k, p)
    rows = torch.full((batch, k, max_len - p), -1, dtype=torch.int32, device=device) if track_rows else None
    b = Beams(running=running, running_scores=torch.zeros(batch, k, device=device), finished=running.clone(),
              finished_scores=torch.full((batch, k), -1e9, device=device),
              finished_lengths=torch.zeros(batch, k, dtype=torch.long, device=device),
              is_finished=torch.zeros(batch, k, dtype=torch.bool, device=device),
              improvable=torch.ones(batch, 1, dtype=torch.bool, device=device), prompt_len=p,
              running_rows=rows, finished_rows=None if rows is None else rows.clone())
    b.running_scores[:, 1:] = -1e9
    return b


def beam_search(state: DecoderState, cfg: GenerationConfig, batch: int, generator: torch.Generator | None,
                prompt: torch.Tensor | None = None) -> GenerateBeamEncoderDecoderOutput:
    """`prompt` (B*K, P): the decoder tokens every beam continues (the start token by default).

    Where only tokens are returned (no per-step scores, no sampling, bans only), the search runs on the int8
    screen of the head (model/beam_screen.py) and falls back to the exact fp32 path when its bounds cannot
    decide a comparison, so the tokens are always those of the exact search."""
    prompt = start_tokens(state, cfg) if prompt is None else prompt
    max_len = cfg.total_length(prompt.shape[1])
    if max_len <= prompt.shape[1]:
        raise ValueError(f"decoder_input_ids already hold {prompt.shape[1]} tokens but max_length is "
                         f"{max_len}: raise max_length or use max_new_tokens")
    screen = BeamScreen.for_search(state.model, state.head, batch * cfg.num_beams) if screenable(state, cfg) \
        else None
    if screen is not None:
        try:
            return run_beams(state, cfg, batch, generator, prompt, screen)
        except Uncertified:   # a near-tie within rounding: transformers' own arithmetic decides it
            screen.stats.restarted = True
            state.restart()
            return run_beams(state, cfg, batch, generator, prompt, None, faithful=True)
    return run_beams(state, cfg, batch, generator, prompt, None)


def needs_every_log_prob(cfg: GenerationConfig) -> bool:
    """Per-step scores, sampling, a repetition penalty (it rescales scores by sign) and invalid-value removal
    read every log-probability of every step: the search then builds them all, as transformers does."""
    return keeps_scores(cfg) or cfg.do_sample or cfg.repetition_penalty != 1.0 or cfg.remove_invalid_values


def screenable(state: DecoderState, cfg: GenerationConfig) -> bool:
    """The screen decides tokens from bans-only processing: not where every log-probability is needed, nor with
    per-step records or without a cache."""
    record = state.record
    return not (needs_every_log_prob(cfg) or not state.use_cache or (
        record is not None and (record.attentions or record.hidden_states or record.logits)))


@dataclass
class Advance:
    """One step of the search, computed without touching the previous Beams."""
    beams: Beams
    parent: torch.Tensor        # (B, K) the running beam each new running beam extends
    merged: torch.Tensor        # (B, K + keep) finished scores before the merge, then the new ones (penalised)


def run_beams(state: DecoderState, cfg: GenerationConfig, batch: int, generator: torch.Generator | None,
              prompt: torch.Tensor, screen: BeamScreen | None, faithful: bool = False
              ) -> GenerateBeamEncoderDecoderOutput:
    """The search loop. `faithful`: every step computes as transformers does (log_softmax over all logits, the
    running scores added to all of them, one top-k over beams x vocabulary), for the same bits, ties included."""
    k, p = cfg.num_beams, prompt.shape[1]
    max_len = cfg.total_length(p)
    device = state.encoder_states.device
    keep = max(2, 1 + len(cfg.eos_ids)) * k  # candidates per step, so k live beams remain after some finish
    # the screen reads each hypothesis's path (transformers' beam indices)
    b = start_beams(prompt, cfg, batch, max_len, track_rows=cfg.return_dict_in_generate or screen is not None)
    all_scores = []
    full_scores = faithful or needs_every_log_prob(cfg)
    for cur in range(p, max_len):
        seqs = b.running[:, :, :cur].reshape(batch * k, cur)
        if screen is not None:
            adv = screened_advance(state, screen, b, seqs, cur, keep, cfg, max_len)
        else:
            logits = state.step(seqs)
            if full_scores:
                log_probs = process_scores(F.log_softmax(logits, dim=-1), seqs, cfg, allowed=state.allowed)
                if cfg.do_sample:
                    log_probs = warp_for_sampling(log_probs, cfg, keep=keep)
                if keeps_scores(cfg):
                    all_scores.append(log_probs)
                vocab = log_probs.shape[-1]
                totals = (log_probs.view(batch, k, vocab) + b.running_scores[:, :, None]).view(batch, k * vocab)
                cands = top_continuations(totals, b.running, cur, keep, vocab, cfg, generator)
            else:
                lse = log_normalizer(logits)     # over the raw logits: transformers bans after log_softmax
                top, tokens = torch.topk(process_scores(logits, seqs, cfg, inplace=True, allowed=state.allowed),
                                         keep, dim=-1)
                cands = top_continuations_fast(top - lse, tokens, b, cur, keep)
            adv = advance(b, *cands, cur, keep, cfg, max_len)
        b = adv.beams
        # parents stay within each input's group, whose cross-attention K/V rows are identical: keep those
        if state.use_cache:
            state.cache.reorder((adv.parent + torch.arange(batch, device=device)[:, None] * k).view(-1),
                                cross=False)
        if not done_searching(b, b.hits, cfg):
            break
    return finish_beams(b, cfg, batch, all_scores)


def advance(b: Beams, cand_scores, cand_seqs, cand_beams, cur: int, keep: int, cfg: GenerationConfig,
            max_len: int) -> Advance:
    """transformers' step from the best `keep` candidates of each input (B, keep): the best k that did not stop
    keep running, those that stopped among the first k join the finished ones."""
    batch, k = b.running_scores.shape
    device = cand_scores.device
    eos = torch.tensor(cfg.eos_ids, device=device)
    hits = torch.isin(cand_seqs[:, :, cur], eos) if len(eos) else torch.zeros_like(cand_scores, dtype=torch.bool)
    hits |= cur + 1 >= max_len
    cand_rows = None
    if b.running_rows is not None:  # transformers' beam_indices: the flat row each new token extends
        cand_rows = gather(b.running_rows, cand_beams).clone()
        cand_rows[:, :, cur - b.prompt_len] = (cand_beams + torch.arange(batch, device=device)[:, None] * k).int()
    live_scores = cand_scores + hits.float() * -1e9
    best = torch.topk(live_scores, k).indices
    new = dataclasses.replace(b, running=gather(cand_seqs, best), running_scores=gather(live_scores, best))
    if cand_rows is not None:
        new.running_rows = gather(cand_rows, best)
    first_k = torch.arange(keep, device=device) < k
    merged = add_finished(new, cand_seqs, cand_scores, hits & first_k[None, :], cur, cfg, cand_rows)
    new.improvable = still_improvable(new, cur + 1, max_len, cfg)
    new.hits = hits
    return Advance(new, gather(cand_beams, best), merged)


def screened_advance(state: DecoderState, screen: BeamScreen, b: Beams, seqs: torch.Tensor, cur: int, keep: int,
                     cfg: GenerationConfig, max_len: int) -> Advance:
    """One step on the int8 screen with every comparison it makes decided (model/beam_screen.py). Undecided: the
    step is redone on full logits; still undecided: the earlier screened steps' log-normalisers are recounted
    exactly and the step decided again; still undecided (a near-tie at rounding level): `Uncertified`."""
    h = state.states(seqs)
    step = cur - b.prompt_len

    def process(scores, rows):
        return process_scores(scores, seqs if rows is None else seqs[rows], cfg, inplace=True,
                              allowed=state.allowed, rows=rows)

    rc = screen.rows(h, process, keep, full=False)
    while True:
        screen.book.record(step, rc, h)
        cands = top_continuations_fast(rc.log_probs(), rc.tokens, b, cur, keep)
        adv = advance(b, *cands, cur, keep, cfg, max_len)
        if decided(b, adv, rc, screen, cur, keep, cfg, max_len):
            return adv
        if not rc.full:
            screen.stats.redone += 1
            rc = screen.rows(h, process, keep, full=True)
        elif screen.book.screened():
            screen.stats.recounts += 1
            b = recounted(b, screen, cfg)
        else:
            raise Uncertified


def recounted(b: Beams, screen: BeamScreen, cfg: GenerationConfig) -> Beams:
    """b with its scores moved to the exact log-normalisers of every earlier screened step."""
    shift = list(screen.book.recount(screen.head.logits))
    past = len(shift) - 1                                       # the current step is not in the scores yet
    running = along(shift[:past], b.running_rows[:, :, :past]).sum(-1) if past else 0.0
    finished = along(shift[:past], b.finished_rows[:, :, :past]).sum(-1) if past else 0.0
    scale = 1.0 / b.finished_lengths.clamp(min=1).double() ** cfg.length_penalty
    return dataclasses.replace(b, running_scores=b.running_scores + running,
                               finished_scores=b.finished_scores + finished * scale.float())


def decided(b: Beams, adv: Advance, rc: RowCandidates, screen: BeamScreen, cur: int, keep: int,
            cfg: GenerationConfig, max_len: int) -> bool:
    """Whether every comparison this step made is decided under the bounds: the best `keep` candidates and
    their order, the merge of finished hypotheses, and the improvable test. Inputs whose search was already
    over (not improvable) are frozen and not checked."""
    batch, k = b.running_scores.shape
    live = b.improvable[:, 0]
    steps = cur + 1 - b.prompt_len
    n = k * keep
    totals = rc.log_probs().view(batch, n) + b.running_scores.repeat_interleave(keep, 1)
    parent = torch.arange(n) // keep
    rows = b.running_rows[:, parent, :steps].clone()                                    # (B, n, S)
    rows[:, :, -1] = (parent[None, :] + torch.arange(batch)[:, None] * k).int()
    ones = torch.ones_like(totals)
    _, pairs = path_uncertainty(screen.book, rows, totals, ones)
    # Tokens of one beam with the very same logit (an int8 head's bf16 logits tie often) tie in transformers too,
    # bit for bit: top-k orders them by position on both sides, so they need no gap
    logit = rc.logits.view(batch, n)
    pairs.masked_fill_((parent[:, None] == parent[None, :]) & (logit[:, :, None] == logit[:, None, :]), -1.0)
    # For tokens, only sets matter: the best `keep`, the first k of them (only those may finish) and the k best
    # that did not stop (they run on); their order changes nothing but the beams' row numbers, which the dict
    # output returns (beam_indices): then the whole order is decided.
    ordered = cfg.return_dict_in_generate
    if not decided_order(totals, pairs, keep, live, None if ordered else (k,)):
        return False
    index = torch.topk(totals, keep).indices                          # as top_continuations_fast ordered them
    cand_pairs = torch.gather(torch.gather(pairs, 1, index[:, :, None].expand(-1, -1, n)), 2,
                              index[:, None, :].expand(-1, keep, -1))
    live_scores = torch.gather(totals, 1, index) + adv.beams.hits.float() * -1e9
    if not ordered and not decided_order(live_scores, cand_pairs, k, live, ()):
        return False
    cand_rows = torch.gather(rows, 1, index[:, :, None].expand(-1, -1, steps))
    old_rows = b.finished_rows[:, :, :steps]
    merged_rows = torch.cat([old_rows, cand_rows], 1)                 # (B, K + keep, S)
    gen = cur + 1 - b.prompt_len
    scale = torch.cat([1.0 / b.finished_lengths.clamp(min=1).float() ** cfg.length_penalty,
                       torch.full((batch, keep), 1.0 / gen ** cfg.length_penalty)], 1)
    real = adv.merged > REAL
    _, merged_pairs = path_uncertainty(screen.book, merged_rows, torch.where(real, adv.merged, -1.0), scale)
    old = torch.arange(k + keep) < k
    merged_pairs[:, old[:, None] & old[None, :]] = 0.0               # their order was decided when they merged
    if not decided_order(adv.merged, merged_pairs, k, live):
        return False
    return improvable_test_decided(adv.beams, screen, cur, max_len, cfg, live)


def improvable_test_decided(new: Beams, screen: BeamScreen, cur: int, max_len: int, cfg: GenerationConfig,
                            live: torch.Tensor) -> bool:
    """still_improvable's test decided for every input whose finished slots are all real (otherwise it
    compares with -1e9 and nothing is close)."""
    length = improvable_length(new, cur + 1, max_len, cfg)
    steps = cur + 1 - new.prompt_len
    best = new.running_scores[:, :1] / length ** cfg.length_penalty
    best_u, _ = path_uncertainty(screen.book, new.running_rows[:, :1, :steps], best,
                                 torch.full_like(best, 1.0 / length ** cfg.length_penalty))
    scale = 1.0 / new.finished_lengths.clamp(min=1).float() ** cfg.length_penalty
    real = new.finished_scores > REAL
    fin_u, _ = path_uncertainty(screen.book, new.finished_rows[:, :, :steps],
                                torch.where(real, new.finished_scores, -1.0), scale)
    check = live & new.is_finished.all(1) & real.all(1) & (best[:, 0] > REAL)
    return improvable_decided(best[:, 0], best_u[:, 0], new.finished_scores, fin_u, check)


def top_continuations(totals, running, cur, keep, vocab, cfg, generator):
    """The best (or sampled) `keep` continuations of each input: scores, sequences, parent beam (B, keep)."""
    if cfg.do_sample:
        index = torch.multinomial(F.softmax(totals, dim=-1), keep, generator=generator)
        scores = torch.gather(totals, 1, index)
    else:
        scores, index = torch.topk(totals, keep)
    parent = index // vocab
    seqs = gather(running, parent).clone()
    seqs[:, :, cur] = index % vocab
    return scores, seqs, parent


def top_continuations_fast(log_probs: torch.Tensor, tokens: torch.Tensor, b: Beams, cur: int, keep: int):
    """top_continuations for the common case (bans only, no sampling) from each row's best `keep` processed
    log-probabilities (B*K, keep) and their `tokens`: the same candidates without building (B, K*V)
    log-probs. Bans commute with the per-row log-softmax shift, so each beam's best `keep` tokens are found on
    its logits, and only those get normalised."""
    batch, k = b.running_scores.shape
    totals = (log_probs.view(batch, k, keep) + b.running_scores[:, :, None]).view(batch, k * keep)
    scores, index = torch.topk(totals, keep)                                # (B, keep)
    parent = index // keep
    out = gather(b.running, parent).clone()
    out[:, :, cur] = torch.gather(tokens.view(batch, k * keep), 1, index)
    return scores, out, parent


def add_finished(b: Beams, cand_seqs, cand_scores, just_finished, cur: int, cfg: GenerationConfig,
                 cand_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Merges newly finished candidates into the k best finished hypotheses (length-penalised scores).
    Returns the merged scores (B, K + keep) the k best were picked from, penalties included."""
    generated = cur + 1 - b.prompt_len  # tokens after the prompt, eos included
    scores = cand_scores / (generated ** cfg.length_penalty)
    full = b.is_finished.all(-1, keepdim=True) & (cfg.early_stopping is True)
    scores = scores + full.float() * -1e9 + (~b.improvable).float() * -1e9 + (~just_finished).float() * -1e9
    lengths = torch.full_like(cand_scores, generated, dtype=torch.long)
    merged_scores = torch.cat([b.finished_scores, scores], 1)
    top = torch.topk(merged_scores, b.finished.shape[1]).indices
    b.finished = gather(torch.cat([b.finished, cand_seqs], 1), top)
    b.finished_scores = gather(merged_scores, top)
    b.finished_lengths = gather(torch.cat([b.finished_lengths, lengths], 1), top)
    b.is_finished = gather(torch.cat([b.is_finished, just_finished], 1), top)
    if cand_rows is not None:
        b.finished_rows = gather(torch.cat([b.finished_rows, cand_rows], 1), top)
    return merged_scores


def improvable_length(b: Beams, cur_len: int, max_len: int, cfg: GenerationConfig) -> int:
    """The length the best running beam's score is penalised at in the improvable test."""
    if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
        return max_len - b.prompt_len
    return cur_len - b.prompt_len


def still_improvable(b: Beams, cur_len: int, max_len: int, cfg: GenerationConfig) -> torch.Tensor:
    """Can the best running beam still beat the worst finished one? (transformers' heuristic)"""
    length = improvable_length(b, cur_len, max_len, cfg)
    best_running = b.running_scores[:, :1] / (length ** cfg.length_penalty)
    worst_finished = torch.where(b.is_finished, b.finished_scores.min(1, keepdim=True).values,
                                 torch.tensor(-1e9, device=b.finished_scores.device))
    return b.improvable & (best_running > worst_finished).any(-1, keepdim=True)


def done_searching(b: Beams, hits: torch.Tensor, cfg: GenerationConfig) -> bool:
    """True while the search must go on."""
    improvement_possible = bool(b.improvable.any())
    open_beam = not (bool(b.is_finished.all()) and cfg.early_stopping is True)
    return improvement_possible and open_beam and not bool(hits.all())


def finish_beams(b: Beams, cfg: GenerationConfig, batch: int, all_scores: list
                 ) -> GenerateBeamEncoderDecoderOutput:
    n = cfg.num_return_sequences
    seqs = b.finished[:, :n].reshape(batch * n, -1)
    generated = int(b.finished_lengths[:, :n].max())
    rows = None if b.finished_rows is None else b.finished_rows[:, :n].reshape(batch * n, -1)[:, :generated]
    scores = keeps_scores(cfg)
    return GenerateBeamEncoderDecoderOutput(seqs[:, : b.prompt_len + generated],
                                            b.finished_scores[:, :n].reshape(-1) if scores else None,
                                            tuple(all_scores) if scores else None, beam_indices=rows)


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
             generation_config: GenerationConfig | None = None, generator: torch.Generator | None = None,
             prefix_allowed_tokens_fn: PrefixFn | None = None, *, inputs_embeds: torch.Tensor | None = None,
             encoder_outputs: Any = None, decoder_input_ids: torch.Tensor | None = None,
             past_key_values: KVCache | None = None, **kwargs: Any) -> torch.Tensor | GenerateOutput:
    """transformers-style generate(): returns sequences (N, L) starting with the decoder prompt, or with
    `return_dict_in_generate=True` a GenerateEncoderDecoderOutput / GenerateBeamEncoderDecoderOutput (beams)
    whose fields (`scores`, `logits`, attentions, hidden states, `past_key_values`) follow output_scores,
    output_logits, output_attentions, output_hidden_states and use_cache as in transformers 4.57.

    The encoder input is `input_ids` (B, S), or `inputs_embeds` (B, S, D), or `encoder_outputs` from a previous
    `model.encode()` / encoder call (then `attention_mask` is the one it was run with). `decoder_input_ids`
    (B, P): decoding continues after them (the start token is put first when no row begins with it).

    `prefix_allowed_tokens_fn(batch_id, ids)` (ids (L,): the row's decoder tokens so far) lists the tokens
    allowed next; all others get -inf after the other bans (transformers 4.57's PrefixConstrainedLogitsProcessor;
    batch_id counts inputs under beam search, rows otherwise).

    Without any encoder input, the encoder reads `bos_token_id` alone (transformers' rule; an error when the
    checkpoint has none). `past_key_values`: the KVCache of an earlier forward or generate() call of this model
    on the same input, whose positions `decoder_input_ids` must start with: decoding feeds only the tokens after
    them (greedy or sampling, one sequence per input), and the cache grows in place."""
    cfg = (generation_config or model.generation_config).updated(**kwargs)
    if kwargs.get("max_length") == DEFAULT_MAX_LENGTH and cfg.max_new_tokens is None:
        # asked for by the call: 20 counts the decoder prompt (transformers adds it only to the default)
        prompt_len = 1 if decoder_input_ids is None else torch.as_tensor(decoder_input_ids).shape[-1]
        cfg = dataclasses.replace(cfg, max_new_tokens=max(1, DEFAULT_MAX_LENGTH - prompt_len))
    cfg.validate()
    if input_ids is None and inputs_embeds is None and encoder_outputs is None:
        input_ids = bos_input(cfg, decoder_input_ids, model.device)
    if attention_mask is None and input_ids is not None and encoder_outputs is None:
        attention_mask = inferred_attention_mask(input_ids, cfg)
    want = cfg.return_dict_in_generate
    enc = run_encoder(model, input_ids, inputs_embeds, attention_mask, encoder_outputs,
                      attentions=want and cfg.output_attentions, hidden_states=want and cfg.output_hidden_states)
    batch, device = enc.last_hidden_state.shape[0], enc.last_hidden_state.device
    if generator is None and cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    expand = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
    prompt = decoder_prompt(decoder_input_ids, batch, cfg, device).repeat_interleave(expand, dim=0)
    cfg = dataclasses.replace(cfg, min_length=cfg.min_total_length(prompt.shape[1]), min_new_tokens=None)
    allowed = PrefixMask(prefix_allowed_tokens_fn, cfg.num_beams) if prefix_allowed_tokens_fn is not None else None
    record = StepRecord(cfg.output_attentions, cfg.output_hidden_states, bool(cfg.output_logits)) if want else None
    head = FastHead.for_model(model, rows=batch * cfg.num_beams) if cfg.num_beams > 1 else None  # full fp32 head
    state = encode_for_generation(model, None, attention_mask, expand, head, allowed, encoder=enc,
                                  use_cache=cfg.use_cache, record=record)
    if past_key_values is not None:
        state.cache = continued_cache(past_key_values, prompt, expand)
    if cfg.num_beams > 1:
        out = beam_search(state, cfg, batch, generator, prompt)
    else:
        out = greedy_or_sample(state, cfg, generator, prompt)
    if not want:
        return out.sequences
    for name, value in record.fields().items():
        setattr(out, name, value)
    out.encoder_attentions = enc.attentions if cfg.output_attentions else None
    out.encoder_hidden_states = enc.hidden_states if cfg.output_hidden_states else None
    out.past_key_values = state.cache if cfg.use_cache else None
    return out


def bos_input(cfg: GenerationConfig, decoder_input_ids, device: torch.device) -> torch.Tensor:
    """(B, 1) of bos_token_id: the encoder input of a generate() call given none (B from decoder_input_ids)."""
    if cfg.bos_token_id is None:
        raise ValueError("`bos_token_id` has to be defined when no `input_ids` are provided: pass input_ids (the "
                         "encoded text, or inputs_embeds, or encoder_outputs), or bos_token_id=... to generate()")
    batch = 1 if decoder_input_ids is None or torch.as_tensor(decoder_input_ids).dim() < 2 else len(decoder_input_ids)
    return torch.full((batch, 1), cfg.bos_token_id, dtype=torch.long, device=device)


def continued_cache(cache: KVCache, prompt: torch.Tensor, expand: int) -> KVCache:
    """Checks that `cache` (past_key_values) can continue `prompt` (N, P): decoding feeds prompt[:, cached:]."""
    if not isinstance(cache, KVCache):
        raise TypeError("past_key_values must be the KVCache a previous call of this model returned")
    if expand > 1:
        raise ValueError("past_key_values continues one sequence per input: use num_beams=1 and "
                         "num_return_sequences=1 with it")
    cached = cache.get_seq_length()
    if cached >= prompt.shape[1]:
        raise ValueError(f"past_key_values holds {cached} decoder positions, so decoder_input_ids must hold those "
                         f"and at least one more (it has {prompt.shape[1]})")
    return cache


def inferred_attention_mask(input_ids: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor | None:
    """transformers' mask when none is given: pad tokens masked, if the input holds any and pad is not eos."""
    pad = cfg.pad_token_id
    if input_ids.dim() != 2 or pad is None or pad in cfg.eos_ids or not bool((input_ids == pad).any()):
        return None
    return input_ids.ne(pad).long()


def run_encoder(model, input_ids, inputs_embeds, attention_mask, encoder_outputs, attentions: bool,
                hidden_states: bool) -> StackOutput:
    """The encoder's output from whichever input was given (transformers' order: encoder_outputs first)."""
    if encoder_outputs is not None:
        return as_stack_output(encoder_outputs)
    if inputs_embeds is not None:
        if inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must be (batch, length, d_model), got shape {tuple(inputs_embeds.shape)}")
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        return model.encoder(inputs_embeds, padding_mask(attention_mask, inputs_embeds.dtype), positions,
                             StackContext(need_weights=attentions), hidden_states)
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError("generate() needs input_ids of shape (batch, length) with length >= 1 (or inputs_embeds, "
                         "or encoder_outputs)")
    if attentions or hidden_states:
        return model.encode(input_ids, attention_mask, attentions, hidden_states)
    return model.encode(input_ids, attention_mask)


def decoder_prompt(decoder_input_ids: torch.Tensor | None, batch: int, cfg: GenerationConfig,
                   device: torch.device) -> torch.Tensor:
    """(B, P) decoder tokens to continue: the start token, or decoder_input_ids with the start token put first
    when no row begins with it (transformers' rule)."""
    start = torch.full((batch, 1), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    if decoder_input_ids is None:
        return start
    ids = torch.as_tensor(decoder_input_ids, device=device).long()
    if ids.dim() == 1:
        ids = ids[None].expand(batch, -1)
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"decoder_input_ids must be (batch={batch}, length), got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        return start
    if bool((ids[:, 0] != cfg.decoder_start_token_id).all()):
        ids = torch.cat([start, ids], 1)
    return ids
