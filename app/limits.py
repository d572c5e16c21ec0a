"""The bounds of every decoding setting: one table that the page's sliders are drawn from and that the server
checks on every call (page or API), so an API caller cannot ask for more than the page offers.

Why bounded at all: beams and returned sequences multiply the decoder's memory (2,500 beams took 6 GB of the
tiny demo model); new tokens multiply its time; a huge length penalty overflows (`OverflowError`) and a top-k
above the vocabulary fails inside torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Bound:
    """An allowed range, inclusive, with the page's slider step and label."""
    low: float
    high: float
    step: float
    label: str


DECODING_BOUNDS: dict[str, Bound] = {
    "max_new_tokens": Bound(1, 512, 1, "Max new tokens"),
    "num_beams": Bound(1, 8, 1, "Beams"),
    "num_return_sequences": Bound(1, 8, 1, "Returned sequences"),
    "no_repeat_ngram_size": Bound(0, 6, 1, "No-repeat n-gram size"),
    "length_penalty": Bound(-2.0, 3.0, 0.1, "Length penalty (beams)"),
    "temperature": Bound(0.05, 2.0, 0.05, "Temperature (sampling)"),
    "top_k": Bound(0, 200, 1, "Top-k (sampling)"),
    "top_p": Bound(0.05, 1.0, 0.05, "Top-p (sampling)"),
    "repetition_penalty": Bound(1.0, 3.0, 0.05, "Repetition penalty"),
    "seed": Bound(-1, 2**32 - 1, 1, "Seed (-1: random)"),
}
# The extractive answer endpoint's `top_k` (alternatives returned), not the sampling one.
MAX_ANSWERS = 20


def check_bounds(settings: dict[str, Any]) -> None:
    """Raises a UserError naming the first setting outside DECODING_BOUNDS (or not a finite number)."""
    for name, value in settings.items():
        bound = DECODING_BOUNDS.get(name)
        if bound is None or value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"Invalid decoding settings: {name} must be a number, got {value!r}.") from None
        if not math.isfinite(number) or not bound.low <= number <= bound.high:
            raise UserError(f"Invalid decoding settings: {name}={value!r} is out of range: this deployment "
                            f"allows {name} from {bound.low:g} to {bound.high:g}.")


# ------------------------------------------------------------------------------------------------------------
# Prompt templates (classification, tagging, question answering): an instruction around the inputs, not a second
# passage. Each placeholder may appear a few times at most: a template of 1000 × {choices} multiplied the labels'
# text 1000 times before anything was cut (14.7 GB on the demo model).
MAX_TEMPLATE_CHARS = 2000


def check_template_limits(template: str, uses: dict[str, int], allowed: dict[str, int]) -> None:
    """Refuses a template over MAX_TEMPLATE_CHARS or with a placeholder used more often than `allowed` says;
    `uses` counts each placeholder found in it."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise UserError(f"The prompt template is {len(template):,} characters long; at most {MAX_TEMPLATE_CHARS:,} "
                        "are allowed: put the input in its own box, not in the template.")
    for name, count in uses.items():
        most = allowed.get(name, 1)
        if count > most:
            times = "once" if most == 1 else f"at most {most} times"
            raise UserError(f"The prompt template holds {{{name}}} {count} times; this deployment allows it "
                            f"{times}: remove the repeats.")


# ------------------------------------------------------------------------------------------------------------
# The cost of a request, counted in tokens before the model runs, against the deployment's working-memory budget.
#
# Why a byte estimate and not a token limit: what a token costs depends on the model (d_model, heads, layers,
# the vocabulary for the logits), so the same budget allows fewer tokens on a bigger model. The estimate is an
# upper bound of the peak working memory (fp32 activations, attention scores and probabilities, the KV cache, the
# logits): measured peaks on the demo and mt5-small shapes were 0.4-0.8 of it (tests/test_bounded.py holds the bound
# against peaks measured in a child process).
REQUEST_MB = 1024                 # MT5_STUDIO_REQUEST_MB: the budget of one request for a small model
REQUEST_SHARE_OF_WEIGHTS = 0.5    # a bigger model's deployment has that much more memory: budget >= weights / 2
LOGITS_CHUNK_BYTES = 2**27        # model.ranking holds at most this much of fp32 logits at once


@dataclass(frozen=True)
class Work:
    """What one request puts through the model: encoder rows of `source_tokens` each, decoder rows of
    `target_tokens` each. `teacher_forced`: the decoder reads all its tokens in one pass (rank classification,
    attention maps); otherwise it generates them one step at a time over a KV cache."""
    what: str                 # for the message, e.g. "60 labels × 412 tokens"
    encoder_rows: int
    source_tokens: int
    decoder_rows: int = 0
    target_tokens: int = 0
    teacher_forced: bool = False
    shared_source: bool = False   # the decoder rows read one encoder row (its K/V repeated as a view)
    attention_maps: bool = False  # every layer's attention weights are kept (the attention panel)

    def tokens(self) -> int:
        return self.encoder_rows * self.source_tokens + self.decoder_rows * self.target_tokens


def working_bytes(work: Work, config: Any) -> int:
    """An upper bound of the peak working memory (bytes) of `work` on a model with `config` (an MT5Config)."""
    d, heads, inner = config.d_model, config.num_heads, config.num_heads * config.d_kv
    ffn = config.d_ff * (2 if getattr(config, "is_gated_act", True) else 1)
    layers = getattr(config, "num_decoder_layers", None) or config.num_layers
    f32 = 4
    re, s, rd, t = work.encoder_rows, work.source_tokens, work.decoder_rows, work.target_tokens
    # one encoder layer at a time: its linear activations, attention scores and probabilities; the output states
    encoder = f32 * (re * s * (6 * d + 2 * ffn) + 2 * re * heads * s * s + re * s * d)
    if work.attention_maps:   # kept for every layer: encoder self, decoder self and cross
        encoder += f32 * heads * (config.num_layers * re * s * s + layers * rd * t * (t + s))
    if not rd:
        return encoder
    cross_rows = 1 if work.shared_source else rd
    cache = f32 * layers * 2 * inner * (rd * t + cross_rows * s)      # self K/V for every token, cross K/V
    cross_layer = f32 * 2 * inner * rd * s                            # one layer's cross K/V as attention reads it
    if work.teacher_forced:
        step = f32 * (rd * t * (6 * d + 2 * ffn) + 2 * rd * heads * t * (t + s)) + cross_layer
        logits = 2 * min(LOGITS_CHUNK_BYTES, f32 * rd * t * config.vocab_size)
    else:
        # a step holds the self K/V twice while it grows or is reordered (beams), and the encoder states per row
        cache += f32 * layers * 2 * inner * rd * t + f32 * rd * s * d
        step = f32 * (rd * (6 * d + 2 * ffn) + 2 * rd * heads * (t + s)) + cross_layer
        logits = 3 * f32 * rd * config.vocab_size                      # logits, log-softmax, scores
    return encoder + cache + step + logits


def request_budget(weight_bytes: int, request_mb: int = REQUEST_MB) -> int:
    """Bytes one request may take: the deployment's MT5_STUDIO_REQUEST_MB, or half the loaded model's weights when
    that is more (a deployment that holds a bigger model has more memory)."""
    return max(int(request_mb) * 2**20, int(weight_bytes * REQUEST_SHARE_OF_WEIGHTS))


def check_work(work: Work, config: Any, budget: int, advice: str) -> int:
    """Refuses `work` whose working memory would exceed `budget` bytes, before any of it runs; returns its
    estimate. `advice` says what to reduce."""
    need = working_bytes(work, config)
    if need > budget:
        raise UserError(f"This request is too large for this deployment: {work.what} ({work.tokens():,} tokens "
                        f"through the model) would need about {_mb(need)} of working memory, and one request may "
                        f"use at most {_mb(budget)} (MT5_STUDIO_REQUEST_MB): {advice}")
    return need


def generation_work(gen: dict[str, Any], rows: int, source_tokens: int, what: str) -> Work:
    """The work of generating for `rows` inputs of `source_tokens` with the settings `gen` (generate()'s keywords,
    already checked against DECODING_BOUNDS): beams or returned samples multiply the decoder rows."""
    beams = int(gen.get("num_beams") or 1)
    returned = int(gen.get("num_return_sequences") or 1)
    per_input = max(beams, returned)
    new = int(gen.get("max_new_tokens") or DECODING_BOUNDS["max_new_tokens"].high)
    return Work(f"{what}: {rows} × {per_input} sequences × {new} new tokens", rows, source_tokens, rows * per_input,
                new)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


# Training (`python -m app train`, app.training): what one run may take on a deployment. A run stopped by the time
# limit keeps its checkpoint, and the same command resumes it.
MAX_TRAIN_STEPS = 20_000
MAX_TRAIN_SECONDS = 6 * 3600
MAX_TRAIN_EXAMPLES = 200_000
MAX_TRAIN_SOURCE_TOKENS = 512
MAX_TRAIN_TARGET_TOKENS = 256
