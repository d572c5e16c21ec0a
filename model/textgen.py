"""Text in, text out: input checks and truncation, streaming, span filling and attention capture.

These take a model and a tokenizer and plain strings; the app and the command line are thin layers over them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from .generation import encode_for_generation, sample_steps

DEFAULT_MAX_INPUT_TOKENS = 512   # mT5 was pre-trained on 1024-token inputs; fine-tunes like XLSum use 512
CHARS_PER_TOKEN_CAP = 24         # text beyond max_input_tokens * this is never tokenized (200k chars stay fast)
MARKER = re.compile(r"<extra_id_(\d+)>")


@dataclass
class EncodedInputs:
    """A padded batch and, per row, whether the text was cut to fit `max_input_tokens`."""
    input_ids: torch.Tensor        # (B, S)
    attention_mask: torch.Tensor   # (B, S)
    truncated: list[bool]
    num_tokens: list[int]


def encode_inputs(tokenizer, texts: str | list[str], max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
                  device: str | torch.device = "cpu") -> EncodedInputs:
    """Tokenizes texts for generation; empty text is an error, long text is truncated (and flagged)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no input text given")
    if max_input_tokens < 2:
        raise ValueError("max_input_tokens must be at least 2 (one token and </s>)")
    rows, truncated = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"input {i + 1} is empty: type some text to process")
        cap = max_input_tokens * CHARS_PER_TOKEN_CAP
        ids = tokenizer.encode(text[:cap])
        cut = len(text) > cap or len(ids) > max_input_tokens
        if len(ids) > max_input_tokens:
            ids = ids[: max_input_tokens - 1] + [tokenizer.eos_token_id]
        rows.append(ids)
        truncated.append(cut)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return EncodedInputs(ids.to(device), mask.to(device), truncated, [len(r) for r in rows])


def clean_ids(tokenizer, ids, keep_sentinels: bool = False) -> list[int]:
    """Generated ids without the start token, pads, eos (and sentinels unless kept)."""
    drop = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    out = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
        if i == tokenizer.eos_token_id:
            break
        if i in drop or (not keep_sentinels and tokenizer.is_sentinel(i)):
            continue
        out.append(i)
    return out


def generate_text(model, tokenizer, texts: str | list[str], max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
                  **gen: Any) -> list[str]:
    """Generated text for each input (num_return_sequences outputs per input, in order)."""
    enc = encode_inputs(tokenizer, texts, max_input_tokens, model.device)
    seqs = model.generate(enc.input_ids, enc.attention_mask, **gen)
    return [tokenizer.decode(clean_ids(tokenizer, row[1:])) for row in seqs]


# ------------------------------------------------------------------------------------------------------------
# Streaming
# ------------------------------------------------------------------------------------------------------------
def stream_text(model, tokenizer, text: str, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
                keep_sentinels: bool = False, **gen: Any) -> Iterator[str]:
    """Yields text increments as tokens are produced (greedy or sampling; beam search yields once at the end).

    An increment is emitted only when the decoded text is stable: a character split over byte-fallback pieces
    is held back until its last byte arrives, so no replacement character ever reaches the user.
    """
    cfg = model.generation_config.updated(**gen)
    cfg.validate()
    if cfg.num_beams > 1 or cfg.num_return_sequences > 1:
        yield generate_text(model, tokenizer, text, max_input_tokens, **gen)[0]
        return
    enc = encode_inputs(tokenizer, text, max_input_tokens, model.device)
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    streamer = TextStreamer(tokenizer, keep_sentinels)
    with torch.no_grad():
        state = encode_for_generation(model, enc.input_ids, enc.attention_mask, 1)
        for tokens, _ in sample_steps(state, cfg, generator):
            piece = streamer.push(int(tokens[0]))
            if piece:
                yield piece
    piece = streamer.end()
    if piece:
        yield piece


class TextStreamer:
    """Turns token ids, one at a time, into stable text increments.

    Decodes everything so far and emits what is new, but holds back while the text ends in a character still
    missing bytes (byte-fallback pieces) or while it does not extend what was already emitted."""

    def __init__(self, tokenizer, keep_sentinels: bool = False):
        self.tokenizer, self.keep_sentinels = tokenizer, keep_sentinels
        self.ids: list[int] = []
        self.emitted = ""

    def text(self) -> str:
        ids = clean_ids(self.tokenizer, self.ids, self.keep_sentinels)
        return self.tokenizer.decode(ids, skip_special_tokens=not self.keep_sentinels)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        current = self.text()
        if current.endswith("\ufffd") or not current.startswith(self.emitted):
            return ""
        return self._emit(current)

    def end(self) -> str:
        current = self.text()
        return self._emit(current) if current.startswith(self.emitted) else ""

    def _emit(self, current: str) -> str:
        new = current[len(self.emitted):]
        self.emitted = current
        return new


# ------------------------------------------------------------------------------------------------------------
# Span filling
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Span:
    """One filled span: the marker it fills (`<extra_id_N>`), its sentinel id, and the model's text."""
    marker: str
    sentinel_id: int
    text: str


@dataclass
class FilledText:
    text: str                          # the input with every marker replaced by its span
    spans: list[Span]                  # one per marker of the input, in input order
    missing: list[str] = field(default_factory=list)  # markers the model produced nothing for
    extra: list[Span] = field(default_factory=list)   # spans for sentinels the input did not contain
    truncated: bool = False
    raw: str = ""                      # the model's output, sentinels included


def parse_spans(tokenizer, ids) -> list[tuple[int, list[int]]]:
    """Splits generated ids into (sentinel id, span ids): each span runs to the next sentinel or eos."""
    spans: list[tuple[int, list[int]]] = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
        if i == tokenizer.eos_token_id:
            break
        if tokenizer.is_sentinel(i):
            spans.append((i, []))
        elif spans and i != tokenizer.pad_token_id:
            spans[-1][1].append(i)
    return spans


def fill_spans(model, tokenizer, text: str, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
               **gen: Any) -> FilledText:
    """Text with `<extra_id_N>` markers -> the filled text and its spans.

    Tolerant of what models do: a sentinel missing from the output leaves its span empty (listed in `missing`),
    a repeated sentinel keeps its first span, and sentinels the input lacked are returned in `extra`.
    """
    markers = [int(n) for n in MARKER.findall(text)]
    if not markers:
        raise ValueError("the text has no <extra_id_N> marker: put <extra_id_0> where the model should fill in")
    for n in markers:
        tokenizer.sentinel_id(n)  # raises for a marker this tokenizer does not have
    enc = encode_inputs(tokenizer, text, max_input_tokens, model.device)
    seq = model.generate(enc.input_ids, enc.attention_mask, **gen)[0, 1:]
    return assemble_spans(tokenizer, text, seq, enc.truncated[0])


def assemble_spans(tokenizer, text: str, generated, truncated: bool = False) -> FilledText:
    """Puts the generated spans (ids without the start token) into the text's markers."""
    markers = [int(n) for n in MARKER.findall(text)]
    wanted = {tokenizer.sentinel_id(n) for n in markers}
    found: dict[int, str] = {}
    extra = []
    for sentinel, span_ids in parse_spans(tokenizer, generated):
        span_text = tokenizer.decode(span_ids, skip_special_tokens=True).strip()
        if sentinel in wanted:
            found.setdefault(sentinel, span_text)  # a repeated sentinel keeps its first span
        else:
            marker = tokenizer.convert_ids_to_tokens([sentinel])[0].lstrip("\u2581")
            extra.append(Span(marker, sentinel, span_text))
    spans, missing = [], []
    for n in markers:
        sid = tokenizer.sentinel_id(n)
        spans.append(Span(f"<extra_id_{n}>", sid, found.get(sid, "")))
        if sid not in found:
            missing.append(f"<extra_id_{n}>")
    by_marker = {s.marker: s.text for s in spans}
    filled = MARKER.sub(lambda m: by_marker.get(m.group(0), ""), text)
    raw = tokenizer.decode(clean_ids(tokenizer, generated, keep_sentinels=True))
    return FilledText(filled, spans, missing, extra, truncated, raw)


# ------------------------------------------------------------------------------------------------------------
# Attention capture
# ------------------------------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """Attention of one teacher-forced pass, arrays (layers, heads, query, key), with the tokens on each axis."""
    encoder: np.ndarray            # (L_enc, H, S, S)
    decoder: np.ndarray | None     # (L_dec, H, T, T)
    cross: np.ndarray | None       # (L_dec, H, T, S)
    source_tokens: list[str]
    target_tokens: list[str]       # the token predicted at each decoder position


def capture_attention(model, tokenizer, source: str | list[int], target_ids: list[int] | None = None,
                      max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS) -> AttentionMaps:
    """Runs one forward pass with attention weights. `source` is the encoder's text, or its ids when the caller
    made them (a question-context pair, say); `target_ids` are the decoder's tokens without the start token (the
    generated output, or the input for heads whose decoder reads it), None for the encoder alone. Any head model
    works: its transformer runs. Generation itself never computes weights: this is a second pass."""
    base = getattr(model, "transformer", model)  # heads that wrap a whole model, as on the Hub
    if isinstance(source, str):
        ids = encode_inputs(tokenizer, source, max_input_tokens, model.device).input_ids
    else:
        ids = list(source)
        if len(ids) > max_input_tokens:
            ids = ids[: max_input_tokens - 1] + [tokenizer.eos_token_id]
        ids = torch.tensor([ids], device=model.device)
    source_tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    with torch.no_grad():
        if target_ids is None or not hasattr(base, "decoder"):
            out = base.encode(ids, output_attentions=True)
            return AttentionMaps(stack(out.attentions), None, None, source_tokens, [])
        target_ids = list(target_ids) or [tokenizer.eos_token_id]
        start = model.config.decoder_start_token_id
        dec_in = torch.tensor([[start] + target_ids[:-1]], device=model.device)
        enc_out, dec_out, _ = base.run(input_ids=ids, decoder_input_ids=dec_in, use_cache=False,
                                       output_attentions=True)
    return AttentionMaps(stack(enc_out.attentions), stack(dec_out.attentions), stack(dec_out.cross_attentions),
                         source_tokens, tokenizer.convert_ids_to_tokens(target_ids))


def stack(weights) -> np.ndarray:
    """Per-layer (1, H, Q, K) tensors -> (L, H, Q, K) float32."""
    return torch.cat([w.float() for w in weights], 0).cpu().numpy()
