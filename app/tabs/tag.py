"""Token tagging: the input with its entities highlighted. The checkpoint decides how: one with a
token-classification head tags every word with its own labels (sub-word pieces merged into words); a text-to-text
one (mT0) is prompted once per entity type and only the strings the text holds are tagged, labelled
"zero-shot (approximate)", the others listed as rejected. Right-to-left text is shown right to left."""
from __future__ import annotations

import gradio as gr

from ..context import AppContext
from ..gpu import on_gpu
from ..prompted_tagging import METHOD, load_defaults, source_of, tag_checkpoint
from ..tasklist import TASKS
from ..tasks import as_plain
from . import attention_panel
from .common import (TabHandle, examples, guarded, model_picker, mount_panels, progress_reporter, run_record,
                     status_html)

TASK = "tagging"


def status_line(result, loaded) -> tuple[str, str]:
    """(message, kind): what was found, and which way (a head, or prompting: zero-shot (approximate))."""
    cut = " The text was cut to fit the model's input limit." if result.truncated else ""
    if source_of(result) == "head":
        return (f"{len(result.entities)} entities, {len(result.words)} words — token-classification head of "
                f"{loaded.request.source}.{cut}", "warn" if cut else "info")
    rejected = f", {len(result.rejected)} returned strings not in the text (rejected)" if result.rejected else ""
    return (f"{METHOD.capitalize()}: {len(result.entities)} entities over {len(result.outputs)} entity types"
            f"{rejected} — prompted {loaded.request.source}, one prompt per type; only strings found in the text "
            f"are tagged.{cut}", "warn" if cut else "info")


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["tagging"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    defaults = load_defaults()
    text = gr.Textbox(lines=4, label="Text to tag", elem_id="tag-input")
    examples(ctx.assets, TASK, [text])
    types = gr.Textbox(", ".join(defaults.types), label="Entity types (comma-separated)",
                       info="Text-to-text checkpoints are prompted once per type; a token-classification head uses "
                            "its own labels.", elem_id="tag-types")
    with gr.Accordion("Prompt template", open=False):
        template = gr.Textbox(defaults.template, lines=3, label="Template",
                              info="{text} is replaced by the input, {type} by each entity type.",
                              elem_id="tag-template")
    run = gr.Button("Tag", variant="primary", elem_id="tag-run")
    status = gr.HTML()
    tagged = gr.HighlightedText(label="Tagged words", show_legend=True, elem_id="tag-output")
    entities = gr.Dataframe(headers=["text", "label", "score", "start", "end", "source"], label="Entities",
                            interactive=False, wrap=True)
    rejected = gr.Dataframe(headers=["returned string", "type", "why not tagged"],
                            label="Rejected (returned by the model, not tagged)", interactive=False, wrap=True,
                            visible=False, elem_id="tag-rejected")
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text}, {"tagged": tagged, "entities": entities, "rejected": rejected},
                       {"types": types, "template": template}, picker, record, status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def run_tag(source, dtype, device, quant, text_v, types_v, template_v, progress=gr.Progress()):
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        inputs = {"text": text_v}
        result = tag_checkpoint(loaded, text_v, types_v, template_v)
        how = source_of(result)
        rows = [[e.text, e.label, round(e.score, 3), e.start, e.end, how] for e in result.entities]
        refused = [[r.text, r.type, r.reason] for r in getattr(result, "rejected", [])]
        message, kind = status_line(result, loaded)
        settings = {"source": how}
        if how == "prompt":
            settings.update(entity_types=list(result.outputs), template=template_v)
        return {tagged: gr.HighlightedText(value=result.segments, rtl=result.rtl), entities: rows,
                rejected: gr.Dataframe(value=refused, visible=bool(refused)),
                status: status_html(message, kind, loaded.describe()),
                record: run_record(TASKS[TASK], loaded, inputs, result, as_plain(result), settings)}

    safe_run = on_gpu(guarded(status, run_tag, (tagged, entities, record)))
    run.click(safe_run, [*picker.components(), text, types, template], [tagged, entities, rejected, status, record],
              api_visibility="private", concurrency_id="models")
    return handle
