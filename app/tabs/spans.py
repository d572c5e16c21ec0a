"""Span filling: text with `<extra_id_N>` markers in, the filled text out, each span labelled by its sentinel."""
from __future__ import annotations

import gradio as gr

from ..context import AppContext
from ..gpu import on_gpu
from ..tasklist import TASKS
from ..tasks import as_plain, is_rtl
from . import attention_panel
from .common import (TabHandle, decoding_controls, examples, guarded, model_picker, mount_panels, prefill_decoding,
                     progress_reporter, run_record, status_html)

TASK = "span_filling"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["span_filling"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    text = gr.Textbox(lines=4, label="Text with <extra_id_N> markers", elem_id="span-input")
    with gr.Row():
        insert = gr.Button("Insert next marker", size="sm", elem_id="span-insert")
        run = gr.Button("Fill the spans", variant="primary", elem_id="span-run")
    examples(ctx.assets, TASK, [text])
    controls = decoding_controls(("max_new_tokens", "num_beams", "no_repeat_ngram_size", "do_sample",
                                  "temperature", "top_k", "top_p", "seed"))
    status = gr.HTML()
    filled = gr.HighlightedText(label="Filled text (each span labelled by its sentinel)", show_legend=False,
                                show_inline_category=True, elem_id="span-output")
    with gr.Accordion("Raw model output", open=False):
        raw = gr.Textbox(label="Generated sequence, sentinels included", interactive=False)
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text}, {"filled": filled, "raw": raw}, controls.components, picker, record,
                       status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def run_fill(source, dtype, device, quant, text_v, *settings, progress=gr.Progress()):
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        inputs = {"text": text_v}
        result = TASKS[TASK].run(loaded, inputs, controls.decoding(list(settings)))
        notes = []
        empty = [span["marker"] for span in result.spans if not span["text"]]
        if empty:
            notes.append(f"the model gave no text for {', '.join(empty)}")
        if result.extra:
            notes.append(f"it also produced {len(result.extra)} span(s) for markers the text does not have")
        if result.truncated:
            notes.append("the text was cut to fit the model's input limit")
        message = "Done" + (": " + "; ".join(notes) if notes else "") + "."
        return {filled: gr.HighlightedText(value=result.segments, rtl=is_rtl(result.text)), raw: result.raw,
                status: status_html(message, "warn" if notes else "info", loaded.describe()),
                record: run_record(TASKS[TASK], loaded, inputs, result, as_plain(result), result.settings)}

    inputs = [*picker.components(), text, *controls.inputs()]
    safe_run = on_gpu(guarded(status, run_fill, (filled, raw, record)))
    run.click(safe_run, inputs, [filled, raw, status, record], api_visibility="private",
              concurrency_id="models")
    # The marker goes where the cursor was: a script in assets/ (`tasks.next_marker` is the same rule in Python).
    insert.click(None, [text], [text], js=ctx.assets.js["insert_marker"], api_visibility="private")
    prefill = guarded(status, lambda s: prefill_decoding(controls, status, s, ctx.cache))
    picker.source.change(prefill, [picker.source], [*controls.inputs(), status], api_visibility="private")
    return handle

