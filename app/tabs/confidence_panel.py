"""The confidence panel under a generated result: the output shaded by how sure the model was of each token."""
from __future__ import annotations

import gradio as gr

from ..attention import AttentionInput
from ..confidence import render_html, token_confidence
from ..context import AppContext
from ..gpu import on_gpu
from ..errors import UserError
from .common import TabHandle, guarded, loaded_of, status_html


def show_confidence(ctx: AppContext, record: dict | None) -> tuple[str, str]:
    """(the shaded output, the summary line) for the result in `record`: one teacher-forced pass of its model."""
    if not record:
        raise UserError("Run the task first: the panel shows the model's confidence in the last result.")
    conf = token_confidence(loaded_of(ctx, record), AttentionInput(**record["attention"]))
    return render_html(conf), conf.summary()


def build(ctx: AppContext, handle: TabHandle) -> dict:
    with gr.Accordion("Confidence", open=False, elem_classes=["confidence-panel"]):
        show = gr.Button("Show the model's confidence", elem_classes=["confidence-show"])
        status = gr.HTML()
        shaded = gr.HTML(elem_classes=["confidence-shaded"])

    def on_show(record):
        text, line = show_confidence(ctx, record)
        return {shaded: text, status: status_html(line)}

    handle.record.change(lambda record: {shaded: "", status: ""}, [handle.record], [shaded, status], queue=False,
                         api_visibility="private")
    show.click(on_gpu(guarded(status, on_show, (shaded,))), [handle.record], [shaded, status], api_visibility="private")
    return {"show": show, "shaded": shaded, "status": status}
