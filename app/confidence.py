"""The model's own confidence in a text it wrote: each output token's probability and the entropy of the
distribution it was drawn from, teacher-forced (one forward pass of the same model: no second model), and the
output text shaded by it.

The probabilities are the model's plain softmax, before decoding settings (no repetition penalty, no
temperature): what the model believed, not what the decoder was allowed to pick.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from .attention import AttentionInput
from .errors import UserError
from .limits import Work
from .models import HEADS, Loaded
from .tasks import MAX_INPUT_TOKENS, input_cap, require_text

LOW = 0.2   # a token the model gave less than this is counted (and shaded darkest)


@dataclass(frozen=True)
class TokenConfidence:
    text: str            # the characters this token completes (byte-fallback pieces: "" until the last byte)
    token: str           # the vocabulary piece
    probability: float
    entropy: float       # nats, of the whole next-token distribution


@dataclass(frozen=True)
class Confidence:
    tokens: list[TokenConfidence]   # the output's tokens, its closing </s> last

    @property
    def mean_probability(self) -> float:
        return sum(t.probability for t in self.tokens) / len(self.tokens)

    @property
    def low(self) -> int:
        return sum(t.probability < LOW for t in self.tokens)

    def summary(self) -> str:
        return (f"{len(self.tokens)} output tokens; mean probability {self.mean_probability:.2f}; "
                f"{self.low} below {LOW:g}. Hover a word for its probability and entropy.")


def token_confidence(loaded: Loaded, what: AttentionInput, max_input_tokens: int = MAX_INPUT_TOKENS) -> Confidence:
    """Each token of `what.target` (the generated text), read by the model after `what.source`."""
    if HEADS[loaded.head].decoder != "generated" or not (what.target or "").strip():
        raise UserError("Confidence is shown for generated text: run a task that writes an output first.")
    require_text(what.source, "text")
    tok, model = loaded.tokenizer, loaded.model
    ids = tok.encode(what.source[: input_cap(max_input_tokens)])[:max_input_tokens]
    target = tok.encode(what.target[: input_cap(max_input_tokens)])[:max_input_tokens]
    loaded.afford(Work(f"confidence of {len(target)} output tokens", 1, len(ids), 1, len(target),
                       teacher_forced=True), "shorten the text.")
    device = model.device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device),
                       labels=torch.tensor([target], device=device)).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(target, device=device)[:, None])[:, 0].exp()
    entropy = -(logp.exp() * logp).sum(-1)
    return Confidence([TokenConfidence(text, piece, float(p), float(h)) for text, piece, p, h in zip(
        increments(tok, target), tok.convert_ids_to_tokens(target), chosen.tolist(), entropy.tolist())])


def increments(tokenizer, ids: list[int]) -> list[str]:
    """What each token adds to the decoded text (a character split over bytes is given to its last byte)."""
    out, before = [], ""
    for n in range(1, len(ids) + 1):
        now = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if now.endswith("\ufffd"):   # an incomplete byte sequence: wait for the rest
            out.append("")
            continue
        out.append(now[len(before):] if now.startswith(before) else now)
        before = now
    return out


def render_html(conf: Confidence) -> str:
    """The output with each token shaded by how unsure the model was (1 − probability); its probability and
    entropy on hover. Orange on either theme; the text keeps the page's colour."""
    spans = []
    for t in conf.tokens:
        if not t.text:
            continue
        shade = min(1.0, (1 - t.probability) / (1 - LOW)) * 0.75
        title = f"{t.token}: p={t.probability:.3f}, entropy {t.entropy:.2f} nats"
        spans.append(f'<span class="conf-token" style="background: rgba(234, 88, 12, {shade:.2f})" '
                     f'title="{html.escape(title)}">{html.escape(t.text)}</span>')
    return f'<div class="confidence-text" dir="auto">{"".join(spans)}</div>'

