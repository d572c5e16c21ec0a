"""Summarization: streamed output, decoding settings prefilled from the checkpoint's own defaults."""
from __future__ import annotations

import gradio as gr

from ..batching import batched
from ..context import AppContext
from ..gpu import on_gpu
from ..tasklist import TASKS
from ..tasks import is_rtl
from . import attention_panel, confidence_panel, explain_panel
from .common import (TabHandle, decoding_controls, examples, guarded, model_picker, mount_panels, prefill_decoding,
                     progress_reporter, run_record, status_html)

TASK = "summarization"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["summarization"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    text = gr.Textbox(lines=8, max_lines=20, label="Text to summarize", elem_id="summarize-input")
    examples(ctx.assets, TASK, [text])
    controls = decoding_controls()
    run = gr.Button("Summarize", variant="primary", elem_id="summarize-run")
    status = gr.HTML()
    summary = gr.Textbox(lines=4, label="Summary", interactive=False, elem_id="summarize-output",
                         buttons=["copy"])
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text}, {"summary": summary}, controls.components, picker, record, status,
                       slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)
    handle.extra["confidence"] = confidence_panel.build(ctx, handle)
    handle.extra["explain"] = explain_panel.build(ctx, handle)

    def run_summary(source, dtype, device, quant, text_v, *settings, progress=gr.Progress()):
        decoding = controls.decoding(list(settings))
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        yield {status: status_html("Summarizing…"), summary: ""}
        result, inputs = None, {"text": text_v}
        for result in TASKS[TASK].stream(loaded, inputs, decoding):
            yield {summary: gr.Textbox(value=result.text, rtl=is_rtl(result.text))}
        note = f"{result.input_tokens} input tokens" + (" — the text was cut to fit the model's input limit"
                                                        if result.truncated else "")
        yield {status: status_html(f"Done: {note}.", "warn" if result.truncated else "info", loaded.describe()),
               record: run_record(TASKS[TASK], loaded, inputs, result, result.text, result.settings)}

    safe_run = on_gpu(guarded(status, run_summary, (summary, record)))
    run.click(safe_run, [*picker.components(), text, *controls.inputs()],
              [summary, status, record], api_name="summarize_stream", api_visibility="undocumented",
              **batched(ctx.settings))
    text.submit(safe_run, [*picker.components(), text, *controls.inputs()],
                [summary, status, record], api_visibility="private", **batched(ctx.settings))
    prefill = guarded(status, lambda source: prefill_decoding(controls, status, source, ctx.cache))
    picker.source.change(prefill, [picker.source], [*controls.inputs(), status], api_visibility="private")
    handle.extra["prefill"] = (prefill, [picker.source], [*controls.inputs(), status])
    return handle
