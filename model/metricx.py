"""MetricX-23/24, Google's learned translation metric, on our mT5: `MT5ForRegression` and a scorer for files.

MetricX (google-research/metricx, `metricx23/models.py`) is an mT5 whose decoder runs one step from token 0; the
score is the logit of token 250089 (`<extra_id_10>`), clamped to [0, 25]. Lower is better: 0 is a perfect
translation, 25 the worst. The checkpoints (`google/metricx-24-hybrid-{large,xl,xxl}-v2p6`, their `-bfloat16`
variants, `google/metricx-23-*`) say `architectures: ["MT5ForRegression"]` and hold the keys of
MT5ForConditionalGeneration; their tokenizer is google/mt5-xl's.

    import json
    from model import MT5Tokenizer
    from model.metricx import MT5ForRegression, iter_scores, score

    metric = MT5ForRegression.from_pretrained("google/metricx-24-hybrid-large-v2p6", load_in_8bit=True)
    tokenizer = MT5Tokenizer.from_pretrained("google/mt5-xl")
    rows = [{"source": "Der Hund bellt.", "hypothesis": "The dog barks.", "reference": "The dog is barking."}]
    result = score(metric, tokenizer, rows, batch_size=16)             # with references
    result.scores, result.truncated                                    # [float], indices of cut rows
    qe = score(metric, tokenizer, rows, qe=True)                       # without references (QE / hybrid)
    with open("segments.jsonl") as f:                                  # a file streamed, in input order
        for row in iter_scores(metric, tokenizer, map(json.loads, f), qe=True):
            print(row.index, row.score, row.truncated)

Inputs are MetricX's own: MetricX-24 reads "source: {src} candidate: {hyp} reference: {ref}" (QE: without the
reference part); MetricX-23 reads "candidate: {hyp} reference: {ref}" (QE: "candidate: {hyp} source: {src}").
The text is tokenized with `</s>`, cut to `max_input_tokens` (MetricX's `max_input_length`, 1536, which counts
that `</s>`), and the final token is removed, so at most 1535 tokens reach the encoder, exactly as MetricX's
predict.py does. Cut rows are reported, empty hypotheses refused.

Numerics: only the one logit is computed (the decoder state dotted with lm_head row 250089, in fp32), not the
250k-row head; scaled by d_model**-0.5 first only when lm_head is tied (MetricX's checkpoints are untied).
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import MT5Config
from .heads import HubMixin, head_masks, one_input
from .hub import CheckpointError
from .modeling import EncoderDecoderBase, ModelOutput, as_stack_output

SCORE_TOKEN_ID = 250089        # <extra_id_10>: its logit is the score
MAX_SCORE = 25.0               # scores are clamped to [0, MAX_SCORE]
MAX_INPUT_TOKENS = 1536        # MetricX's max_input_length (counting the `</s>` it then removes)
VERSIONS = (23, 24)


@dataclass
class RegressionOutput(ModelOutput):
    """MetricX's output: `predictions` (B,) clamped scores, and the MSE `loss` when labels were given."""
    predictions: torch.Tensor | None = None


class MT5ForRegression(HubMixin, EncoderDecoderBase):
    """MetricX: mT5 whose score is the clamped logit of `<extra_id_10>` after one decoder step from token 0.

    Keys are MT5ForConditionalGeneration's (`shared`, `encoder`, `decoder`, `lm_head`), so the Hub's MetricX
    checkpoints load with `from_pretrained` and every option the other classes take (dtype, load_in_8bit,
    load_in_4bit, device_map, ...)."""

    def __init__(self, config: MT5Config):
        if config.vocab_size <= SCORE_TOKEN_ID:
            raise ValueError(f"MetricX reads the logit of token {SCORE_TOKEN_ID} (<extra_id_10>) but vocab_size is "
                             f"{config.vocab_size}: a MetricX checkpoint has mT5's vocabulary (250112)")
        super().__init__(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, repo_or_dir, **options: Any):
        """Loads a MetricX checkpoint (see `model.loading.from_pretrained` for the options). A checkpoint without
        `lm_head.weight` is refused: its score row would be random."""
        wants_info = options.pop("output_loading_info", False)
        loaded, info = super().from_pretrained(repo_or_dir, output_loading_info=True, **options)
        if "lm_head.weight" in info.missing_keys:
            raise CheckpointError(f"{repo_or_dir} has no lm_head.weight, so it is not a MetricX checkpoint (the "
                                  f"score is lm_head row {SCORE_TOKEN_ID}): load a google/metricx-* model")
        architectures = loaded.config.architectures or []
        if architectures and cls.__name__ not in architectures:
            warnings.warn(f"{repo_or_dir} says architectures={architectures}, not {cls.__name__}: unless it was "
                          "fine-tuned as MetricX, its scores mean nothing", stacklevel=2)
        return (loaded, info) if wants_info else loaded

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings and type(self.lm_head) is nn.Linear and type(self.shared) is nn.Embedding:
            self.lm_head.weight = self.shared.weight

    # ------------------------------------------------------------------ the score
    @torch.no_grad()
    def score_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The unclamped score logit (B,) float32 of inputs (B, S): one encoder pass, one decoder step."""
        encoded = self.encode(input_ids, attention_mask).last_hidden_state
        start = torch.full((input_ids.shape[0], 1), self.config.decoder_start_token_id, dtype=torch.long,
                           device=input_ids.device)
        states = self.decode(start, encoded, attention_mask).last_hidden_state[:, 0]   # (B, D)
        return self.score_logit(states)

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MetricX scores (B,) float32 in [0, 25] of inputs (B, S); lower is better."""
        return self.score_logits(input_ids, attention_mask).clamp(0.0, MAX_SCORE)

    def score_logit(self, states: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, D) -> logit of token 250089 (B,) float32, from that one lm_head row.

        A quantized or offloaded head (quantize_embeddings=True, disk offload) has no plain row to read: it runs
        whole and the one column is kept."""
        if self.config.tie_word_embeddings:
            states = states * self.config.d_model ** -0.5
        head = self.lm_head
        if type(head) is nn.Linear and not head.weight.is_meta:
            row = head.weight[SCORE_TOKEN_ID]
            return states.to(row.device).float() @ row.float()
        return head(states)[:, SCORE_TOKEN_ID].float()

    def forward(self, input_ids=None, attention_mask=None, decoder_attention_mask=None, head_mask=None,
                decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> RegressionOutput | tuple:
        """MetricX's forward (metricx23/models.py): `predictions` (B,) and, with `labels` (B,), their MSE `loss`.

        As in MetricX, `use_cache`, `output_attentions` and `output_hidden_states` are accepted and the output
        carries none of them."""
        one_input(input_ids, inputs_embeds, "")
        given = input_ids if input_ids is not None else inputs_embeds
        if given is None and encoder_outputs is not None:
            given = as_stack_output(encoder_outputs).last_hidden_state
        if given is None:
            raise ValueError("pass input_ids (or inputs_embeds, or encoder_outputs from a previous call)")
        start = torch.full((given.shape[0], 1), self.config.decoder_start_token_id, dtype=torch.long,
                           device=self.device)
        _, dec, _ = self.run(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=start,
                             decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
                             use_cache=False, inputs_embeds=inputs_embeds,
                             **head_masks(self, head_mask, decoder_head_mask, cross_attn_head_mask))
        predictions = self.score_logit(dec.last_hidden_state[:, 0]).clamp(0.0, MAX_SCORE)
        loss = None
        if labels is not None:
            loss = F.mse_loss(predictions.view(-1), labels.to(predictions.device, predictions.dtype).view(-1))
        return self.returned(RegressionOutput(loss=loss, predictions=predictions), return_dict)


# ------------------------------------------------------------------------------------------------------------
# Scoring rows
# ------------------------------------------------------------------------------------------------------------
def metricx_input(source: str | None, hypothesis: str, reference: str | None = None, version: int = 24) -> str:
    """MetricX's input text for one segment; `reference=None` gives the QE (reference-free) form."""
    if version == 24:
        text = f"source: {source} candidate: {hypothesis}"
        return text if reference is None else f"{text} reference: {reference}"
    if version == 23:
        return f"candidate: {hypothesis} " + (f"source: {source}" if reference is None else f"reference: {reference}")
    raise ValueError(f"MetricX version must be one of {VERSIONS}, got {version!r}")


def row_text(row: Any, index: int, qe: bool, version: int) -> str:
    """A row ({"source", "hypothesis", "reference"} as MetricX's jsonl, or a (source, hypothesis[, reference])
    tuple) -> its input text; refuses what MetricX cannot score, naming the row (counted from 0)."""
    if isinstance(row, Mapping):
        source, hypothesis, reference = row.get("source"), row.get("hypothesis"), row.get("reference")
    elif isinstance(row, (tuple, list)) and len(row) in (2, 3):
        source, hypothesis, reference = (*row, None) if len(row) == 2 else row
    else:
        raise TypeError(f"row {index} (counting from 0) is a {type(row).__name__}: give a dict with 'source', "
                        "'hypothesis' and 'reference', or a (source, hypothesis[, reference]) tuple")
    for name, value in (("hypothesis", hypothesis), ("source", source), ("reference", reference)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"row {index} (counting from 0): {name} is a {type(value).__name__}, not text")
    if hypothesis is None or not hypothesis.strip():
        raise ValueError(f"row {index} (counting from 0) has an empty hypothesis: MetricX cannot score an empty "
                         "translation; drop the row or give it a score of your own")
    if source is None and (qe or version == 24):
        raise ValueError(f"row {index} (counting from 0) has no source: MetricX-{version} "
                         f"{'QE ' if qe else ''}reads the source segment")
    if not qe and reference is None:
        raise ValueError(f"row {index} (counting from 0) has no reference: pass qe=True to score without "
                         "references (with a QE or hybrid checkpoint)")
    return metricx_input(source, hypothesis, None if qe else reference, version)


def encode_text(tokenizer, text: str, max_input_tokens: int) -> tuple[list[int], bool]:
    """Token ids as MetricX feeds them, and whether the text was cut: tokenized with `</s>`, cut to
    `max_input_tokens` (keeping the `</s>`, as the tokenizer's truncation does), then the last token dropped."""
    ids = list(tokenizer(text)["input_ids"])
    if not ids or ids[-1] != tokenizer.eos_token_id:
        raise ValueError("the tokenizer did not end the text with </s>, which MetricX removes: use the mT5 "
                         "tokenizer (google/mt5-xl's) with its special tokens on")
    truncated = len(ids) > max_input_tokens
    return ids[:-1][:max_input_tokens - 1], truncated


@dataclass
class ScoredRow:
    """One row's result: its index in the input (from 0), score (0 best .. 25 worst), the number of tokens the
    encoder read, and whether the input was cut to fit `max_input_tokens`."""
    index: int
    score: float
    tokens: int
    truncated: bool


@dataclass
class MetricXScores:
    """`score()`'s result: scores in input order; `truncated`: indices of the rows cut to `max_input_tokens`."""
    scores: list[float] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


@torch.inference_mode()
def score_ids(model: MT5ForRegression, rows: list[list[int]], batch_size: int = 16) -> list[float]:
    """Scores token-id rows: sorted by length (longest first, so memory peaks at the start), run in batches of
    `batch_size` padded to their own longest row; returns the scores in the rows' order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    scores = [0.0] * len(rows)
    pad, device = model.config.pad_token_id, model.device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(rows[batch[0]])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            ids[j, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            mask[j, :len(rows[i])] = 1
        for i, value in zip(batch, model.predict(ids.to(device), mask.to(device)).tolist()):
            scores[i] = value
    return scores


def iter_scores(model: MT5ForRegression, tokenizer, rows: Iterable[Any], *, qe: bool = False, version: int = 24,
                batch_size: int = 16, max_input_tokens: int = MAX_INPUT_TOKENS,
                chunk_rows: int = 1024) -> Iterator[ScoredRow]:
    """Scores `rows` (dicts or tuples, see `row_text`) and yields a ScoredRow per row, in input order.

    Rows are read `chunk_rows` at a time, so a file of any length streams through holding one chunk: each chunk
    is checked (a bad row raises before the chunk is scored), tokenized, sorted by length and run in padded
    batches of `batch_size`. `qe=True` ignores references (reference-free scoring)."""
    if version not in VERSIONS:
        raise ValueError(f"MetricX version must be one of {VERSIONS}, got {version!r}")
    if max_input_tokens < 2:
        raise ValueError(f"max_input_tokens must be at least 2 (one token and </s>), got {max_input_tokens}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    source, start = iter(rows), 0
    while chunk := list(itertools.islice(source, chunk_rows)):
        texts = [row_text(row, start + i, qe, version) for i, row in enumerate(chunk)]
        encoded = [encode_text(tokenizer, text, max_input_tokens) for text in texts]
        scores = score_ids(model, [ids for ids, _ in encoded], batch_size)
        for i, ((ids, cut), value) in enumerate(zip(encoded, scores)):
            yield ScoredRow(start + i, value, len(ids), cut)
        start += len(chunk)


def score(model: MT5ForRegression, tokenizer, rows: Iterable[Any], *, qe: bool = False, version: int = 24,
          batch_size: int = 16, max_input_tokens: int = MAX_INPUT_TOKENS, chunk_rows: int = 1024) -> MetricXScores:
    """All of `iter_scores` in one result; cut rows are listed in `truncated` and named in one warning."""
    result = MetricXScores()
    for row in iter_scores(model, tokenizer, rows, qe=qe, version=version, batch_size=batch_size,
                           max_input_tokens=max_input_tokens, chunk_rows=chunk_rows):
        result.scores.append(row.score)
        result.tokens.append(row.tokens)
        if row.truncated:
            result.truncated.append(row.index)
    if result.truncated:
        shown = ", ".join(map(str, result.truncated[:10])) + (", ..." if len(result.truncated) > 10 else "")
        warnings.warn(f"{len(result.truncated)} row(s) longer than {max_input_tokens} tokens were cut to fit, as "
                      f"MetricX cuts them (rows {shown}, counting from 0): their scores judge the kept part only",
                      stacklevel=2)
    return result
