"""Translation: a source text and a target language picked by name; the translation streams in."""
from __future__ import annotations

import gradio as gr

from ..batching import batched
from ..context import AppContext
from ..gpu import on_gpu
from ..tasklist import TASKS
from ..tasks import is_rtl
from ..translation import languages
from . import attention_panel, confidence_panel, explain_panel
from .common import (TabHandle, decoding_controls, examples, guarded, model_picker, mount_panels, prefill_decoding,
                     progress_reporter, run_record, status_html)

TASK = "translation"
DEFAULT_TARGET = "English"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["translation"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    text = gr.Textbox(lines=6, max_lines=20, label="Text to translate", elem_id="translate-input")
    target = gr.Dropdown([lang.name for lang in languages()], value=DEFAULT_TARGET, filterable=True,
                         label="Target language", info="type to search", elem_id="translate-target")
    examples(ctx.assets, TASK, [text, target], fields=("text", "target"))
    controls = decoding_controls()
    run = gr.Button("Translate", variant="primary", elem_id="translate-run")
    status = gr.HTML()
    translation = gr.Textbox(lines=4, label="Translation", interactive=False, elem_id="translate-output",
                             buttons=["copy"])
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text, "target": target}, {"translation": translation}, controls.components,
                       picker, record, status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)
    handle.extra["confidence"] = confidence_panel.build(ctx, handle)
    handle.extra["explain"] = explain_panel.build(ctx, handle)

    def run_translation(source, dtype, device, quant, text_v, target_v, *settings, progress=gr.Progress()):
        decoding = controls.decoding(list(settings))
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        yield {status: status_html("Translating…"), translation: ""}
        result, inputs = None, {"text": text_v, "target": target_v}
        for result in TASKS[TASK].stream(loaded, inputs, decoding):
            yield {translation: gr.Textbox(value=result.text, rtl=is_rtl(result.text))}
        note = (f"into {result.target} ({result.method}), {result.input_tokens} input tokens"
                + (" — the text was cut to fit the model's input limit" if result.truncated else ""))
        yield {status: status_html(f"Done: {note}.", "warn" if result.truncated else "info", loaded.describe()),
               record: run_record(TASKS[TASK], loaded, inputs, result, result.text,
                                  {**result.settings, "target_language": result.code})}

    safe_run = on_gpu(guarded(status, run_translation, (translation, record)))
    run.click(safe_run, [*picker.components(), text, target, *controls.inputs()],
              [translation, status, record], api_name="translate_stream", api_visibility="undocumented",
              **batched(ctx.settings))
    text.submit(safe_run, [*picker.components(), text, target, *controls.inputs()],
                [translation, status, record], api_visibility="private", **batched(ctx.settings))
    prefill = guarded(status, lambda source: prefill_decoding(controls, status, source, ctx.cache))
    picker.source.change(prefill, [picker.source], [*controls.inputs(), status], api_visibility="private")
    handle.extra["prefill"] = (prefill, [picker.source], [*controls.inputs(), status])
    return handle
