"""Explanations of a generated output for the page and the API (model.explain does the work): which source words
made an output word, why this word and not another, how much each output word leans on the source rather than on
the output so far. Plain functions: a loaded model and texts in, named results and HTML out.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from model import explain as mx

from .attention import AttentionInput
from .confidence import increments
from .errors import UserError
from .limits import Work
from .models import HEADS, Loaded
from .tasks import MAX_INPUT_TOKENS, input_cap, require_text

# What the page offers, by the question each answers; the model layer's method name after it.
QUESTIONS = {
    "Which source words made this word? (gradient × input)": "gradient_x_input",
    "How sensitive is this word to each source word? (saliency)": "saliency",
    "How much of this word's probability does each source word account for? (integrated gradients)":
        "integrated_gradients",
    "Which source words does each layer mix into this word? (value zeroing)": "value_zeroing",
    "Source or the output so far — and which source words? (ALTI+)": "alti_plus",
}
IG_STEPS = 16            # the page's integrated-gradients steps (the API may ask up to MAX_IG_STEPS)
MAX_IG_STEPS = 64        # a deployment's cap: each step is one forward and backward pass
# the rows each method holds at once, for the request's memory bound (a gradient: twice a forward's; value
# zeroing: its corrupted rows, batched; integrated gradients: counted from its steps)
PASSES = {"gradient_x_input": 2, "saliency": 2, "integrated_gradients": 2 * IG_STEPS, "value_zeroing": 12,
          "alti_plus": 3, "contrastive": 3}


@dataclass
class Explanation:
    method: str
    source_pieces: list[str]            # what each source token adds to the text ("" inside a split character)
    target_pieces: list[str]
    position: int                       # the output token explained
    source: list[float]                 # its score per source token
    prefix: list[float]                 # per output token before it (decoder inputs: the start token first)
    source_share: list[float] = field(default_factory=list)   # ALTI+: per output token, the part from the source
    contrast: dict[str, Any] | None = None                    # why not: produced/alternative log-probs, difference
    delta: float | None = None                                # integrated gradients' convergence delta


def encoded(loaded: Loaded, what: AttentionInput) -> tuple[list[int], list[int]]:
    """(source ids, output ids) as the model read and wrote them; refuses what has no generated output."""
    if HEADS[loaded.head].decoder != "generated" or not (what.target or "").strip():
        raise UserError("Explanations are for generated text: run a task that writes an output first.")
    require_text(what.source, "text")
    tok = loaded.tokenizer
    source = tok.encode(what.source[: input_cap(MAX_INPUT_TOKENS)])[:MAX_INPUT_TOKENS]
    target = tok.encode(what.target[: input_cap(MAX_INPUT_TOKENS)])[:MAX_INPUT_TOKENS]
    return source, target


def output_choices(loaded: Loaded, what: AttentionInput) -> list[tuple[str, int]]:
    """The output's tokens as a dropdown offers them: ("3: Haus", 3); the closing </s> left out."""
    _, target = encoded(loaded, what)
    pieces = increments(loaded.tokenizer, target)
    return [(f"{i}: {p.strip() or loaded.tokenizer.convert_ids_to_tokens(target[i])}", i)
            for i, p in enumerate(pieces) if i < len(target) - 1]


def explain(loaded: Loaded, what: AttentionInput, method: str, position: int, alternative: str = "",
            steps: int = IG_STEPS, progress: Callable[[int, int], None] | None = None) -> Explanation:
    """`method` (a name of QUESTIONS' values, or "contrastive" with `alternative`) for output token `position`."""
    if method not in PASSES:
        raise UserError(f"Unknown explanation method {method!r}: use one of {', '.join(PASSES)}.")
    if method == "integrated_gradients" and not 1 <= int(steps) <= MAX_IG_STEPS:
        raise UserError(f"Integrated gradients with {steps} steps: this deployment allows 1 to {MAX_IG_STEPS} "
                        "(each step is a forward and backward pass).")
    if method == "contrastive" and not alternative.strip():
        raise UserError("Type the word you expected instead, in the \"why not\" box.")
    source, target = encoded(loaded, what)
    if not 0 <= int(position) < len(target):
        raise UserError(f"Output token {position} does not exist: the output has tokens 0 to {len(target) - 1}.")
    # rows held at once: integrated gradients' steps run 16 at a time (forward and backward)
    rows = 2 * min(int(steps), mx.IG_BATCH) if method == "integrated_gradients" else PASSES[method]
    loaded.afford(Work(f"{method} over {len(source)} × {len(target)} tokens", rows, len(source), rows,
                       len(target), teacher_forced=True), "shorten the text.")
    ids, out = torch.tensor(source), torch.tensor(target)
    model, tok = loaded.model, loaded.tokenizer
    try:
        result = run(model, tok, method, ids, out, int(position), alternative, int(steps), progress)
    except ValueError as e:   # the model layer's refusals (an alternative that tokenizes to nothing, ...)
        raise UserError(str(e)) from None
    return Explanation(method, increments(tok, source), increments(tok, target), int(position), **result)


def run(model, tok, method: str, ids, out, position: int, alternative: str, steps: int, progress) -> dict:
    if method == "contrastive":
        # the produced word against the whole alternative word, each scored token by token after the prefix
        c = mx.contrastive(model, ids, None, out, position, alternative, tokenizer=tok, mode="continuation")
        produced = tok.decode(c.produced_ids).strip() or tok.convert_ids_to_tokens(c.produced_ids[0])
        wanted = tok.decode(c.alternative_ids).strip() or tok.convert_ids_to_tokens(c.alternative_ids[0])
        return {"source": c.source.tolist(), "prefix": c.prefix.tolist(),
                "contrast": {"produced": produced, "alternative": wanted, "produced_logprob": c.produced_logprob,
                             "alternative_logprob": c.alternative_logprob, "difference": c.difference}}
    if method == "integrated_gradients":
        a = mx.integrated_gradients(model, ids, None, out, positions=[position], steps=steps,
                                    baseline_token=tok.unk_token_id, progress=progress)
        return {"source": a.source[0].tolist(), "prefix": a.prefix[0].tolist(), "delta": float(a.delta[0])}
    if method in ("gradient_x_input", "saliency"):
        a = getattr(mx, method)(model, ids, None, out, positions=[position])
        return {"source": a.source[0].tolist(), "prefix": a.prefix[0].tolist()}
    a = getattr(mx, method)(model, ids, None, out, **({"progress": progress} if method == "value_zeroing" else {}))
    row = int((a.positions == position).nonzero()[0, 0])
    share = a.source_share.tolist() if method == "alti_plus" else []
    return {"source": a.source[row].tolist(), "prefix": a.prefix[row].tolist(), "source_share": share}


def shade(score: float, top: float) -> str:
    """Blue for a positive score, red for a negative one, by its size against the largest (both themes)."""
    alpha = min(1.0, abs(score) / top) * 0.8 if top else 0.0
    return f"rgba(37, 99, 235, {alpha:.2f})" if score >= 0 else f"rgba(220, 38, 38, {alpha:.2f})"


def render_html(e: Explanation) -> str:
    """The source text lit by the explained token's scores (on the text itself: dir=auto keeps right-to-left
    scripts right), the output with that token marked, ALTI+'s source share per output token, and the contrast."""
    esc = html.escape
    top = max((abs(s) for s in e.source), default=0.0)
    lit = "".join(f'<span class="expl-token" style="background: {shade(s, top)}" title="{s:+.4f}">{esc(p)}</span>'
                  for p, s in zip(e.source_pieces, e.source) if p)
    marked = "".join(f'<mark class="expl-target">{esc(p)}</mark>' if i == e.position else esc(p)
                     for i, p in enumerate(e.target_pieces))
    out = [f'<div class="explanation"><div class="expl-label">Source, lit by its part in output token '
           f'{e.position} ({esc(e.target_pieces[e.position].strip() or "·")}):</div>',
           f'<div class="expl-source" dir="auto">{lit}</div>',
           f'<div class="expl-label">Output:</div><div class="expl-output" dir="auto">{marked}</div>']
    if e.source_share:
        bars = "".join(f'<span class="expl-bar" title="{esc(p)}: {100 * s:.0f}% from the source" '
                       f'style="--share: {100 * s:.0f}%">{esc(p) or "·"}</span>'
                       for p, s in zip(e.target_pieces, e.source_share))
        low = [p.strip() for p, s in zip(e.target_pieces, e.source_share) if s < 0.5 and p.strip()]
        out.append(f'<div class="expl-label">Share from the source, per output token (the rest from the output so '
                   f'far){": leaning on the prefix: " + esc(", ".join(low[:12])) if low else ""}</div>'
                   f'<div class="expl-bars" dir="auto">{bars}</div>')
    if e.contrast:
        c = e.contrast
        out.append(f'<div class="expl-contrast">log p({esc(c["produced"])}) − log p({esc(c["alternative"])}) = '
                   f'{c["difference"]:+.3f} nats: the model prefers '
                   f'{esc(c["produced"] if c["difference"] > 0 else c["alternative"])} to '
                   f'{esc(c["alternative"] if c["difference"] > 0 else c["produced"])}; the source is lit by each '
                   f"word's part in that difference.</div>")
    if e.delta is not None:
        out.append(f'<div class="expl-label">Convergence delta {e.delta:+.2e} (small against the scores: the steps '
                   f"were enough).</div>")
    return "".join(out) + "</div>"
