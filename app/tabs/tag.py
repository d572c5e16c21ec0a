"""Token tagging: the input with its tagged words highlighted; sub-word pieces merged into words; right-to-left
text shown right to left."""
from __future__ import annotations

import gradio as gr

from ..context import AppContext
from ..tasklist import TASKS
from ..tasks import Decoding, as_plain
from . import attention_panel
from .common import (TabHandle, examples, guarded, model_picker, mount_panels, progress_reporter, run_record,
                     status_html)

TASK = "tagging"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["tagging"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    text = gr.Textbox(lines=4, label="Text to tag", elem_id="tag-input")
    examples(ctx.assets, TASK, [text])
    run = gr.Button("Tag", variant="primary", elem_id="tag-run")
    status = gr.HTML()
    tagged = gr.HighlightedText(label="Tagged words", show_legend=True, elem_id="tag-output")
    entities = gr.Dataframe(headers=["text", "label", "score", "start", "end"], label="Entities",
                            interactive=False, wrap=True)
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text}, {"tagged": tagged, "entities": entities}, {}, picker, record, status,
                       slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def run_tag(source, dtype, device, quant, text_v, progress=gr.Progress()):
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        inputs = {"text": text_v}
        result = TASKS[TASK].run(loaded, inputs, Decoding())
        rows = [[e.text, e.label, round(e.score, 3), e.start, e.end] for e in result.entities]
        cut = " The text was cut to fit the model's input limit." if result.truncated else ""
        return {tagged: gr.HighlightedText(value=result.segments, rtl=result.rtl), entities: rows,
                status: status_html(f"{len(result.entities)} entities, {len(result.words)} words.{cut}",
                                    "warn" if cut else "info", loaded.describe()),
                record: run_record(TASKS[TASK], loaded, inputs, result, as_plain(result))}

    safe_run = guarded(status, run_tag, (tagged, entities, record))
    run.click(safe_run, [*picker.components(), text], [tagged, entities, status, record],
              api_visibility="private", concurrency_id="models")
    return handle
