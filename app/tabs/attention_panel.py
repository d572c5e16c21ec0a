"""The attention panel under a result: pick encoder/decoder/cross, layer and head (or their mean), and a window
of tokens per axis; the heatmap shows the weight on hover."""
from __future__ import annotations

import gradio as gr

from ..attention import AttentionInput, KINDS, available_kinds, render_html, select
from ..context import AppContext
from ..gpu import on_gpu
from ..errors import UserError
from .common import TabHandle, guarded, loaded_of, status_html


def maps_for(ctx: AppContext, record: dict | None):
    """The attention maps of the result in `record` (rerunning its model once, then cached)."""
    if not record:
        raise UserError("Run the task first: the attention panel shows the maps of the last result.")
    return ctx.attention.get(loaded_of(ctx, record), AttentionInput(**record["attention"]))


def build(ctx: AppContext, handle: TabHandle) -> dict:
    with gr.Accordion("Attention", open=False, elem_classes=["attention-panel"]):
        with gr.Row():
            kind = gr.Radio(list(KINDS), value="cross", label="Attention", scale=2,
                            info="encoder self-, decoder self-, or cross-attention (decoder → encoder)")
            layer = gr.Slider(0, 1, value=0, step=1, label="Layer")
            head = gr.Dropdown(["mean"], value="mean", label="Head", info="'mean' averages the heads")
        with gr.Row():
            window = gr.Slider(8, 128, value=40, step=1, label="Tokens per axis")
            row_start = gr.Slider(0, 1, value=0, step=1, label="First query token")
            col_start = gr.Slider(0, 1, value=0, step=1, label="First key token")
        show = gr.Button("Show attention", elem_classes=["attention-show"])
        status = gr.HTML()
        heatmap = gr.HTML(elem_classes=["attention-heatmap"])

    def show_attention(record, kind_v, layer_v, head_v, window_v, r0, c0):
        maps = maps_for(ctx, record)
        kinds = available_kinds(maps)
        kind_v = kind_v if kind_v in kinds else kinds[-1]
        n_layers, n_heads = getattr(maps, kind_v).shape[:2]
        layer_v = min(int(layer_v), n_layers - 1)
        view = select(maps, kind_v, layer_v, head_v)
        n_rows, n_cols = view.weights.shape
        return {
            kind: gr.Radio(choices=kinds, value=kind_v),
            layer: gr.Slider(0, max(1, n_layers - 1), value=layer_v, step=1),
            head: gr.Dropdown(["mean"] + [str(h) for h in range(n_heads)], value=view.head),
            row_start: gr.Slider(0, max(1, n_rows - 1), value=min(int(r0), n_rows - 1)),
            col_start: gr.Slider(0, max(1, n_cols - 1), value=min(int(c0), n_cols - 1)),
            heatmap: render_html(view, r0, c0, window_v),
            status: status_html(f"{len(maps.source_tokens)} input tokens"
                                + (f", {len(maps.target_tokens)} decoder tokens" if maps.target_tokens else "")
                                + ". Hover a cell for its weight."),
        }

    def redraw(record, kind_v, layer_v, head_v, window_v, r0, c0):
        if not record:
            return {}
        maps = maps_for(ctx, record)
        if kind_v not in available_kinds(maps):
            return {}
        return {heatmap: render_html(select(maps, kind_v, layer_v, head_v), r0, c0, window_v), status: ""}

    def new_result(record):
        """A new result (or none): the map shown is the previous result's, so it goes."""
        return {heatmap: "", status: ""}

    inputs = [handle.record, kind, layer, head, window, row_start, col_start]
    outputs = [kind, layer, head, row_start, col_start, heatmap, status]
    # Off the queue, like the annotation panel's reset: behind other jobs it could land after "Show attention".
    handle.record.change(new_result, [handle.record], [heatmap, status], queue=False, api_visibility="private")
    show.click(on_gpu(guarded(status, show_attention)), inputs, outputs, api_visibility="private")
    # another kind of attention has other axes: the windows start again at the first query and key
    kind.input(guarded(status, lambda record, k, lay, h, w, r0, c0: show_attention(record, k, lay, h, w, 0, 0)),
               inputs, outputs, api_visibility="private")
    gr.on([head.input, layer.release, window.release, row_start.release, col_start.release],
          guarded(status, redraw), inputs, [heatmap, status], api_visibility="private")
    return {"kind": kind, "layer": layer, "head": head, "heatmap": heatmap, "show": show}
