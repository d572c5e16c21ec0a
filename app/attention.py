"""Attention maps of a result: which pass to rerun for each kind of model, one layer/head picked, and the
heatmap as HTML (tokens on both axes, the weight on hover, a window of tokens per axis for long inputs)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.textgen import AttentionMaps, capture_attention

from .errors import UserError
from .limits import Work
from .models import HEADS, Loaded
from .tasks import MAX_INPUT_TOKENS, input_cap, require_text

KINDS = ("encoder", "decoder", "cross")
KIND_NAMES = {"encoder": "encoder self-attention", "decoder": "decoder self-attention",
              "cross": "cross-attention (decoder → encoder)"}


@dataclass
class AttentionInput:
    """What a result's attention is computed from: the encoder's text (with the question, for QA pairs) and the
    decoder's tokens: `target` text (generated output), or the input itself for heads whose decoder reads it."""
    source: str
    question: str | None = None
    target: str | None = None


def capture(loaded: Loaded, what: AttentionInput, max_input_tokens: int = MAX_INPUT_TOKENS) -> AttentionMaps:
    """Reruns the model once with attention weights for `what`."""
    require_text(what.source, "text")
    model, tokenizer = loaded.model, loaded.tokenizer
    source = what.source[: input_cap(max_input_tokens)]
    # the encoder's ids exactly as the task made them: QA heads read the (question, context) pair
    ids = (tokenizer.encode(what.question[: input_cap(max_input_tokens)], source) if what.question is not None
           else tokenizer.encode(source))
    decoder = HEADS[loaded.head].decoder
    target = None
    if decoder == "generated" and what.target:   # text-to-text: the generated tokens on the decoder
        target = tokenizer.encode(what.target[: input_cap(max_input_tokens)])[:max_input_tokens]
    elif decoder == "input":          # classification and QA heads: the decoder reads the input again
        target = ids[:max_input_tokens]
    s, t = min(len(ids), max_input_tokens), len(target or ())
    loaded.afford(Work(f"attention maps of {s} × {t} tokens", 1, s, 1 if t else 0, t, teacher_forced=True,
                       attention_maps=True), "shorten the text.")
    return capture_attention(model, tokenizer, ids, target, max_input_tokens)


@dataclass
class HeatmapView:
    """One (query x key) matrix of the maps, with its tokens."""
    kind: str
    layer: int
    head: str                  # "mean" or a head index as text
    num_layers: int
    num_heads: int
    weights: np.ndarray        # (Q, K)
    queries: list[str]
    keys: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "head": self.head, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "queries": self.queries, "keys": self.keys,
                "weights": np.round(self.weights, 5).tolist()}


def available_kinds(maps: AttentionMaps) -> list[str]:
    return [k for k in KINDS if getattr(maps, k) is not None]


def select(maps: AttentionMaps, kind: str = "encoder", layer: int = -1, head: str | int = "mean") -> HeatmapView:
    """Picks `kind`'s layer (negative counts from the last) and head ("mean" averages the heads)."""
    if kind not in KINDS:
        raise UserError(f"Unknown attention kind {kind!r}: use one of {', '.join(KINDS)}.")
    array = getattr(maps, kind)
    if array is None:
        raise UserError(f"This model has no {KIND_NAMES[kind]}: pick one of {', '.join(available_kinds(maps))}.")
    num_layers, num_heads = array.shape[:2]
    layer = int(layer)
    if not -num_layers <= layer < num_layers:
        raise UserError(f"Layer {layer} does not exist: this model has {num_layers} (0 to {num_layers - 1}).")
    layer %= num_layers
    head = str(head).strip().lower()
    if head in ("mean", "average", "avg", ""):
        weights, head = array[layer].mean(0), "mean"
    else:
        if not head.lstrip("-").isdigit() or not 0 <= int(head) < num_heads:
            raise UserError(f"Head {head!r} does not exist: pick 0 to {num_heads - 1}, or 'mean'.")
        weights = array[layer, int(head)]
    queries = maps.source_tokens if kind == "encoder" else maps.target_tokens
    keys = maps.target_tokens if kind == "decoder" else maps.source_tokens
    return HeatmapView(kind, layer, head, num_layers, num_heads, weights, list(queries), list(keys))


def token_label(token: str) -> str:
    return html.escape(token.replace("\u2581", "▁"))


def render_html(view: HeatmapView, row_start: int = 0, col_start: int = 0, window: int = 48) -> str:
    """An HTML table heatmap of a window of the matrix: rows are queries, columns keys; hovering a cell shows
    "query → key: weight". Colour is the square root of the weight over the matrix's largest, so the pattern
    shows even when weights are spread thin over a long input (the hover gives the true weight)."""
    n_rows, n_cols = view.weights.shape
    window = max(4, int(window))
    r0 = min(max(0, int(row_start)), max(0, n_rows - window))
    c0 = min(max(0, int(col_start)), max(0, n_cols - window))
    rows, cols = range(r0, min(n_rows, r0 + window)), range(c0, min(n_cols, c0 + window))
    top = float(view.weights.max()) or 1.0
    head = "average over heads" if view.head == "mean" else f"head {view.head}"
    out = [f'<div class="attn-caption">{KIND_NAMES[view.kind]} · layer {view.layer} of 0–{view.num_layers - 1}'
           f' · {head} · full colour = {top:.3f} · queries {r0}–{rows[-1] if rows else r0} of {n_rows}, keys {c0}–'
           f'{cols[-1] if cols else c0} of {n_cols}</div>',
           '<div class="attn-scroll"><table class="attn-map"><thead><tr><th class="attn-corner">query ＼ key</th>']
    out += [f'<th class="attn-col" dir="auto" title="key {j}: {token_label(view.keys[j])}">'
            f'<span>{token_label(view.keys[j])}</span></th>' for j in cols]
    out.append("</tr></thead><tbody>")
    for i in rows:
        q = token_label(view.queries[i])
        out.append(f'<tr><th class="attn-row" dir="auto" title="query {i}: {q}">{q}</th>')
        for j in cols:
            w = float(view.weights[i, j])
            alpha = min(1.0, max(0.0, w / top)) ** 0.5
            out.append(f'<td style="background:rgba(67,56,202,{alpha:.3f})" '
                       f'title="{q} → {token_label(view.keys[j])}: {w:.4f}"></td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)
