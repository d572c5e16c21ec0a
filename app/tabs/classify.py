"""Classification: label probabilities as a bar chart, the labels from the checkpoint's id2label."""
from __future__ import annotations

import gradio as gr

from ..context import AppContext
from ..tasklist import TASKS
from ..tasks import Decoding, as_plain
from . import attention_panel
from .common import (TabHandle, examples, guarded, model_picker, mount_panels, progress_reporter, run_record,
                     status_html)

TASK = "classification"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["classification"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    text = gr.Textbox(lines=4, label="Text to classify", elem_id="classify-input")
    examples(ctx.assets, TASK, [text])
    run = gr.Button("Classify", variant="primary", elem_id="classify-run")
    status = gr.HTML()
    probabilities = gr.Label(label="Label probabilities", num_top_classes=20, elem_id="classify-output")
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text}, {"probabilities": probabilities}, {}, picker, record, status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def run_classify(source, dtype, device, quant, text_v, progress=gr.Progress()):
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        inputs = {"text": text_v}
        result = TASKS[TASK].run(loaded, inputs, Decoding())
        note = " (multi-label: each probability on its own)" if result.multi_label else ""
        cut = " The text was cut to fit the model's input limit." if result.truncated else ""
        return {probabilities: result.probabilities,
                status: status_html(f"Predicted: {result.label}{note}.{cut}", "warn" if cut else "info",
                                     loaded.describe()),
                record: run_record(TASKS[TASK], loaded, inputs, result, as_plain(result))}

    safe_run = guarded(status, run_classify, (probabilities, record))
    run.click(safe_run, [*picker.components(), text], [probabilities, status, record],
              api_visibility="private", concurrency_id="models")
    return handle
