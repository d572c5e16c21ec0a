"""Generation over one decoder `step()`: greedy, sampling and beam search as plain functions.

The encoder runs once. The decoder's self-attention K/V grow in a cache, cross-attention K/V are computed once,
relative-bias rows are computed only for the new position, and beam search reorders only the filled part of the
self-attention cache. Argument names, defaults and results follow transformers 4.57's `generate()`, so the same
settings give the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .config import MAX_NEW_TOKENS_LIMIT, GenerationConfig  # noqa: F401 (the limit is read from here too)
from .fast_head import FastHead
from .modeling import KVCache, padding_mask

NEG_INF = float("-inf")
# transformers' `prefix_allowed_tokens_fn(batch_id, decoder ids so far (L,)) -> allowed next token ids`
PrefixFn = Callable[[int, torch.Tensor], list[int]]


@dataclass
class GenerateOutput:
    """`sequences` (N, L) start with the decoder start token; `scores` per step (N, V) when asked."""
    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None
    sequences_scores: torch.Tensor | None = None


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
    cache: KVCache = field(init=False)

    def __post_init__(self):
        self.cache = KVCache(len(self.model.decoder.block))
        if self.head is None:
            self.head = FastHead.for_model(self.model)

    @torch.no_grad()
    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, 1) at the next position -> decoder states (N, D)."""
        return self.model.decode_step(tokens, self.encoder_states, self.encoder_mask, self.cache)[:, -1, :]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact next-token logits (N, V) in fp32."""
        return self.head.logits(self.states(tokens))

    def greedy(self, tokens: torch.Tensor, seqs: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
        """Next tokens (N,) by exact argmax of the processed logits."""
        states = self.states(tokens)
        if cfg.repetition_penalty != 1.0:  # it rescales scores by their sign: outside the int8 screen's bound
            return process_scores(self.head.logits(states), seqs, cfg, allowed=self.allowed).argmax(-1)
        # the prefix mask is a ban to -inf like the others, so the screen's proof still holds
        return self.head.argmax(states, lambda scores, rows: process_scores(
            scores, seqs if rows is None else seqs[rows], cfg, allowed=self.allowed, rows=rows))


def encode_for_generation(model, input_ids, attention_mask, expand: int, head: FastHead | None = None,
                          allowed: "PrefixMask | None" = None) -> DecoderState:
    """Runs the encoder once and repeats its states for beams / return sequences."""
    enc = model.encode(input_ids, attention_mask).last_hidden_state
    mask = padding_mask(attention_mask, enc.dtype) if attention_mask is not None and not bool(
        attention_mask.all()) else None
    if expand > 1:
        enc = enc.repeat_interleave(expand, dim=0)
        mask = None if mask is None else mask.repeat_interleave(expand, dim=0)
    return DecoderState(model, enc, mask, head, allowed)


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
        scores = ban_repeated_ngrams(scores, seqs, cfg.no_repeat_ngram_size)
    if cfg.bad_words_ids:
        scores = ban_bad_words(scores, seqs, cfg.bad_words_ids, cfg.eos_ids)
    if seqs.shape[1] < cfg.min_total_length() and cfg.eos_ids:
        scores = scores if inplace else scores.clone()
        scores[:, cfg.eos_ids] = NEG_INF
    if allowed is not None:
        scores = allowed(scores, seqs, rows)
    return scores


def ban_repeated_ngrams(scores: torch.Tensor, seqs: torch.Tensor, n: int) -> torch.Tensor:
    """Forbids any token that would repeat an n-gram already in the row."""
    length = seqs.shape[1]
    if length + 1 < n:
        return scores
    scores = scores.clone()
    rows = seqs.tolist()
    for i, row in enumerate(rows):
        prefix = tuple(row[length - n + 1:])
        banned = [row[j + n - 1] for j in range(length - n + 1) if tuple(row[j:j + n - 1]) == prefix]
        if banned:
            scores[i, banned] = NEG_INF
    return scores


def ban_bad_words(scores: torch.Tensor, seqs: torch.Tensor, bad: list[list[int]], eos: list[int]) -> torch.Tensor:
    """Forbids the last token of each banned sequence when the row ends with the rest of it."""
    bad = [b for b in bad if not (len(b) == 1 and b[0] in eos)]  # as transformers: eos alone is never banned
    scores = scores.clone()
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
def sample_steps(state: DecoderState, cfg: GenerationConfig, generator: torch.Generator | None,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (next tokens (N,), processed scores (N, V)) each step until every row ends or the limit."""
    n = state.encoder_states.shape[0]
    device = state.encoder_states.device
    seqs = torch.full((n, 1), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    eos = torch.tensor(cfg.eos_ids, device=device)
    for _ in range(cfg.total_length() - 1):
        scores = None
        if cfg.do_sample or cfg.output_scores:
            scores = process_scores(state.step(seqs[:, -1:]), seqs, cfg, allowed=state.allowed)
        if cfg.do_sample:
            probs = F.softmax(warp_for_sampling(scores, cfg), dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        elif scores is not None:
            tokens = scores.argmax(-1)
        else:
            tokens = state.greedy(seqs[:, -1:], seqs, cfg)
        tokens = torch.where(unfinished, tokens, cfg.pad_token_id)
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        yield tokens, scores
        if len(eos):
            unfinished &= ~torch.isin(tokens, eos)
        if not unfinished.any():
            return


def greedy_or_sample(state: DecoderState, cfg: GenerationConfig,
                     generator: torch.Generator | None) -> GenerateOutput:
    start = torch.full((state.encoder_states.shape[0], 1), cfg.decoder_start_token_id, dtype=torch.long,
                       device=state.encoder_states.device)
    tokens, scores = [start], []
    for step_tokens, step_scores in sample_steps(state, cfg, generator):
        tokens.append(step_tokens[:, None])
        if cfg.output_scores:
            scores.append(step_scores)
    return GenerateOutput(torch.cat(tokens, 1), tuple(scores) if cfg.output_scores else None)


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


def gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Picks beams along dim 1: t (B, K, ...) with index (B, J) -> (B, J, ...)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index.expand(*index.shape[:2], *t.shape[2:]), dim=1)


def beam_search(state: DecoderState, cfg: GenerationConfig, batch: int,
                generator: torch.Generator | None) -> GenerateOutput:
    k, max_len = cfg.num_beams, cfg.total_length()
    device = state.encoder_states.device
    keep = max(2, 1 + len(cfg.eos_ids)) * k  # candidates per step, so k live beams remain after some finish
    first_k = torch.arange(keep, device=device) < k
    fill = cfg.pad_token_id
    b = Beams(
        running=torch.full((batch, k, max_len), fill, dtype=torch.long, device=device),
        running_scores=torch.zeros(batch, k, device=device),
        finished=torch.full((batch, k, max_len), fill, dtype=torch.long, device=device),
        finished_scores=torch.full((batch, k), -1e9, device=device),
        finished_lengths=torch.zeros(batch, k, dtype=torch.long, device=device),
        is_finished=torch.zeros(batch, k, dtype=torch.bool, device=device),
        improvable=torch.ones(batch, 1, dtype=torch.bool, device=device),
    )
    b.running[:, :, 0] = cfg.decoder_start_token_id
    b.running_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
    eos = torch.tensor(cfg.eos_ids, device=device)
    all_scores = []
    full_scores = cfg.output_scores or cfg.do_sample or cfg.repetition_penalty != 1.0
    for cur in range(1, max_len):
        seqs = b.running[:, :, :cur].reshape(batch * k, cur)
        logits = state.step(seqs[:, -1:])
        if full_scores:
            log_probs = process_scores(F.log_softmax(logits, dim=-1), seqs, cfg, allowed=state.allowed)
            if cfg.output_scores:
                all_scores.append(log_probs)
            if cfg.do_sample:
                log_probs = warp_for_sampling(log_probs, cfg, keep=keep)
            vocab = log_probs.shape[-1]
            totals = (log_probs.view(batch, k, vocab) + b.running_scores[:, :, None]).view(batch, k * vocab)
            cand_scores, cand_seqs, cand_beams = top_continuations(totals, b.running, cur, keep, vocab, cfg,
                                                                   generator)
        else:
            cand_scores, cand_seqs, cand_beams = top_continuations_fast(logits, seqs, b, cur, keep, cfg,
                                                                        state.allowed)
        hits = torch.isin(cand_seqs[:, :, cur], eos) if len(eos) else torch.zeros_like(cand_scores, dtype=torch.bool)
        hits |= cur + 1 >= max_len
        # the best k candidates that did not stop keep running
        live_scores = cand_scores + hits.float() * -1e9
        best = torch.topk(live_scores, k).indices
        b.running, b.running_scores = gather(cand_seqs, best), gather(live_scores, best)
        parent = gather(cand_beams, best)
        add_finished(b, cand_seqs, cand_scores, hits & first_k[None, :], cur, cfg)
        # parents stay within each input's group, whose cross-attention K/V rows are identical: keep those
        state.cache.reorder((parent + torch.arange(batch, device=device)[:, None] * k).view(-1), cross=False)
        b.improvable = still_improvable(b, cur + 1, max_len, cfg)
        if not done_searching(b, hits, cfg):
            break
    return finish_beams(b, cfg, batch, all_scores)


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


def top_continuations_fast(logits, seqs, b: Beams, cur: int, keep: int, cfg: GenerationConfig,
                           allowed: PrefixMask | None = None):
    """top_continuations for the common case (bans only, no sampling): the same candidates without building
    (B, K*V) log-probs. Bans commute with the per-row log-softmax shift, so each beam's best `keep` tokens are
    found on its logits, and only those get normalised."""
    batch, k = b.running_scores.shape
    # log-sum-exp by hand: torch.logsumexp (and exp of very negative values) hits denormals, 10-30x slower on CPU;
    # terms below e^-80 cannot change an fp32 sum that contains 1.
    top_logit = logits.amax(-1, keepdim=True)
    lse = top_logit + (logits - top_logit).clamp_(min=-80.0).exp_().sum(-1, keepdim=True).log()
    logits = process_scores(logits, seqs, cfg, inplace=True, allowed=allowed)
    top, tokens = torch.topk(logits, keep, dim=-1)                          # (B*K, keep)
    totals = ((top - lse).view(batch, k, keep) + b.running_scores[:, :, None]).view(batch, k * keep)
    scores, index = torch.topk(totals, keep)                                # (B, keep)
    parent = index // keep
    out = gather(b.running, parent).clone()
    out[:, :, cur] = torch.gather(tokens.view(batch, k * keep), 1, index)
    return scores, out, parent


def add_finished(b: Beams, cand_seqs, cand_scores, just_finished, cur: int, cfg: GenerationConfig) -> None:
    """Merges newly finished candidates into the k best finished hypotheses (length-penalised scores)."""
    scores = cand_scores / (cur ** cfg.length_penalty)  # `cur` generated tokens, eos included
    full = b.is_finished.all(-1, keepdim=True) & (cfg.early_stopping is True)
    scores = scores + full.float() * -1e9 + (~b.improvable).float() * -1e9 + (~just_finished).float() * -1e9
    lengths = torch.full_like(cand_scores, cur, dtype=torch.long)
    merged_scores = torch.cat([b.finished_scores, scores], 1)
    top = torch.topk(merged_scores, b.finished.shape[1]).indices
    b.finished = gather(torch.cat([b.finished, cand_seqs], 1), top)
    b.finished_scores = gather(merged_scores, top)
    b.finished_lengths = gather(torch.cat([b.finished_lengths, lengths], 1), top)
    b.is_finished = gather(torch.cat([b.is_finished, just_finished], 1), top)


def still_improvable(b: Beams, cur_len: int, max_len: int, cfg: GenerationConfig) -> torch.Tensor:
    """Can the best running beam still beat the worst finished one? (transformers' heuristic)"""
    if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
        length = max_len - 1
    else:
        length = cur_len - 1
    best_running = b.running_scores[:, :1] / (length ** cfg.length_penalty)
    worst_finished = torch.where(b.is_finished, b.finished_scores.min(1, keepdim=True).values,
                                 torch.tensor(-1e9, device=b.finished_scores.device))
    return b.improvable & (best_running > worst_finished).any(-1, keepdim=True)


def done_searching(b: Beams, hits: torch.Tensor, cfg: GenerationConfig) -> bool:
    """True while the search must go on."""
    improvement_possible = bool(b.improvable.any())
    open_beam = not (bool(b.is_finished.all()) and cfg.early_stopping is True)
    return improvement_possible and open_beam and not bool(hits.all())


def finish_beams(b: Beams, cfg: GenerationConfig, batch: int, all_scores: list) -> GenerateOutput:
    n = cfg.num_return_sequences
    seqs = b.finished[:, :n].reshape(batch * n, -1)
    lengths = b.finished_lengths[:, :n].reshape(-1)
    seqs = seqs[:, : int(lengths.max()) + 1]
    return GenerateOutput(seqs, tuple(all_scores) if cfg.output_scores else None,
                          b.finished_scores[:, :n].reshape(-1))


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             generation_config: GenerationConfig | None = None, generator: torch.Generator | None = None,
             prefix_allowed_tokens_fn: PrefixFn | None = None, **kwargs: Any) -> torch.Tensor | GenerateOutput:
    """transformers-style generate(): returns sequences (N, L) starting with the decoder start token, or a
    GenerateOutput with `return_dict_in_generate=True` / `output_scores=True`.

    `prefix_allowed_tokens_fn(batch_id, ids)` (ids (L,): the row's decoder tokens so far) lists the tokens
    allowed next; all others get -inf after the other bans (transformers 4.57's PrefixConstrainedLogitsProcessor;
    batch_id counts inputs under beam search, rows otherwise)."""
    cfg = (generation_config or model.generation_config).updated(**kwargs)
    cfg.validate()
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError("generate() needs input_ids of shape (batch, length) with length >= 1")
    if generator is None and cfg.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(cfg.seed)
    batch = input_ids.shape[0]
    allowed = PrefixMask(prefix_allowed_tokens_fn, cfg.num_beams) if prefix_allowed_tokens_fn is not None else None
    if cfg.num_beams > 1:
        head = FastHead.for_model(model, rows=batch * cfg.num_beams)  # beams need the full fp32 head every step
        state = encode_for_generation(model, input_ids, attention_mask, cfg.num_beams, head, allowed)
        out = beam_search(state, cfg, batch, generator)
    else:
        state = encode_for_generation(model, input_ids, attention_mask, cfg.num_return_sequences,
                                      allowed=allowed)
        out = greedy_or_sample(state, cfg, generator)
    return out if (cfg.return_dict_in_generate or cfg.output_scores) else out.sequences
