"""Classification: every label's probability as a bar chart. The checkpoint decides how: a text-to-text one
(mT0) scores the typed labels by rank classification with an editable prompt template; one with a
classification head uses its head and its own labels. The status line says which way it scored."""
from __future__ import annotations

import gradio as gr

from ..context import AppContext
from ..gpu import on_gpu
from ..ranking import HEAD, classify_checkpoint, load_presets, method_of, preset_named
from ..tasklist import TASKS
from ..tasks import as_plain
from . import attention_panel
from .common import (TabHandle, examples, guarded, model_picker, mount_panels, progress_reporter, run_record,
                     status_html)

TASK = "classification"


def preset_fields(name: str) -> dict:
    """What picking preset `name` changes: its labels and template, and which inputs show."""
    p = preset_named(name)
    pair = "premise" in p.fields
    return {"labels": "\n".join(p.labels) if any("," in label for label in p.labels) else ", ".join(p.labels),
            "template": p.template, "text_visible": not pair, "pair_visible": pair}


def status_line(result, loaded) -> tuple[str, str]:
    """(message, kind) for the status line: the prediction and which way it was scored."""
    cut = " The text was cut to fit the model's input limit." if result.truncated else ""
    if method_of(result) == HEAD:
        note = " (multi-label: each probability on its own)" if result.multi_label else ""
        how = f"classification head of {loaded.request.source}, its own {len(result.probabilities)} labels"
    else:
        note = ", each label's log-probability divided by its token count" if result.normalized else ""
        how = f"rank classification over {len(result.probabilities)} labels with {loaded.request.source}"
    return f"Predicted: {result.label} — scored by {how}{note}.{cut}", "warn" if cut else "info"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["classification"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    presets = load_presets()
    first = preset_fields(next(iter(presets)))
    preset = gr.Dropdown([(p.title, p.name) for p in presets.values()], value=next(iter(presets)),
                         label="Preset", info="Fills in labels and template; both stay editable.",
                         elem_id="classify-preset")
    text = gr.Textbox(lines=4, label="Text to classify", elem_id="classify-input")
    with gr.Row(visible=False) as pair:
        premise = gr.Textbox(lines=3, label="Premise", elem_id="classify-premise")
        hypothesis = gr.Textbox(lines=3, label="Hypothesis", elem_id="classify-hypothesis")
    examples(ctx.assets, TASK, [text])
    labels = gr.Textbox(first["labels"], lines=2, label="Labels (comma-separated, or one per line)",
                        info="Text-to-text checkpoints score these; a classification head uses its own labels.",
                        elem_id="classify-labels")
    with gr.Accordion("Prompt template", open=False):
        template = gr.Textbox(first["template"], lines=3, label="Template",
                              info="{text} (or {premise} and {hypothesis}) is replaced by the input, {choices} by "
                                   "the labels.", elem_id="classify-template")
        normalize = gr.Checkbox(False, label="Normalise by label length",
                                info="Divide each label's summed log-probability by its token count (T0 and mT0 "
                                     "were evaluated without).", elem_id="classify-normalize")
    run = gr.Button("Classify", variant="primary", elem_id="classify-run")
    status = gr.HTML()
    probabilities = gr.Label(label="Label probabilities", num_top_classes=20, elem_id="classify-output")
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"text": text}, {"probabilities": probabilities},
                       {"preset": preset, "labels": labels, "template": template, "normalize": normalize}, picker,
                       record, status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def pick_preset(name):
        f = preset_fields(name)
        return {labels: f["labels"], template: f["template"], text: gr.Textbox(visible=f["text_visible"]),
                pair: gr.Row(visible=f["pair_visible"]), status: ""}

    def run_classify(source, dtype, device, quant, preset_v, text_v, premise_v, hypothesis_v, labels_v, template_v,
                     normalize_v, progress=gr.Progress()):
        p = preset_named(preset_v)
        inputs = {"premise": premise_v, "hypothesis": hypothesis_v} if "premise" in p.fields else {"text": text_v}
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        result = classify_checkpoint(loaded, inputs, labels_v, template_v, bool(normalize_v), p)
        message, kind = status_line(result, loaded)
        settings = {"method": method_of(result), "preset": p.name}
        if method_of(result) != HEAD:
            settings.update(labels=list(result.probabilities), template=template_v, normalize=bool(normalize_v))
        shown = inputs if "text" in inputs else {"text": getattr(result, "prompt", ""), **inputs}
        return {probabilities: result.probabilities, status: status_html(message, kind, loaded.describe()),
                record: run_record(TASKS[TASK], loaded, shown, result, as_plain(result), settings)}

    preset.change(pick_preset, [preset], [labels, template, text, pair, status], api_visibility="private")
    safe_run = on_gpu(guarded(status, run_classify, (probabilities, record)))
    run.click(safe_run, [*picker.components(), preset, text, premise, hypothesis, labels, template, normalize],
              [probabilities, status, record], api_visibility="private", concurrency_id="models")
    return handle
