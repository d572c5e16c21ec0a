"""The confidence panel under a generated result: the output shaded by how sure the model was of each token."""
from __future__ import annotations

import gradio as gr

from ..attention import AttentionInput
from ..confidence import render_html, token_confidence
from ..context import AppContext
from ..gpu import on_gpu
from ..errors import UserError
from ..annotation.api import input_as_text
from .common import TabHandle, guarded, loaded_of, status_html

METRICX_TASKS = ("summarization", "translation")   # MetricX judges text written from a source


def show_confidence(ctx: AppContext, record: dict | None) -> tuple[str, str]:
    """(the shaded output, the summary line) for the result in `record`: one teacher-forced pass of its model."""
    if not record:
        raise UserError("Run the task first: the panel shows the model's confidence in the last result.")
    conf = token_confidence(loaded_of(ctx, record), AttentionInput(**record["attention"]))
    return render_html(conf), conf.summary() + metricx_line(ctx, record)


def metricx_line(ctx: AppContext, record: dict) -> str:
    """With the deployment's MetricX configured (MT5_STUDIO_METRICX; off by default: ~0.5 s a segment on 2 CPU
    cores), its reference-free score of the result, for summaries and translations."""
    if ctx.metricx is None or record.get("task") not in METRICX_TASKS:
        return ""
    row = {"source": input_as_text(record.get("input") or {}), "hypothesis": str(record.get("output_text", ""))}
    (value,) = ctx.metricx.scores([row], qe=True)
    return "" if value is None else f" MetricX QE {value:.2f} (0 best, 25 worst; {ctx.settings.metricx})."


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
