"""The annotation panel under every task tab's result: rate, correct, tag errors, comment, save with provenance.

`register(ctx, store)` adds it to `ctx.panels`; each task tab then mounts it in its slot with its `TabHandle`.
The judgement fields (`fields`) are shared with the Annotations and Batch tabs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..api import NO_RESULT, save_from_record
from ...context import AppContext
from ..store import AnnotationStore, load_error_categories
from ...tasks import is_rtl
from ...tabs.common import status_html
from .identity import AnnotatorName

RATINGS = ["1", "2", "3", "4", "5"]


@dataclass
class JudgementFields:
    """The judgement components: rating, corrected output, error categories, comment, annotator."""
    rating: gr.Radio
    corrected: gr.Textbox
    categories: gr.CheckboxGroup
    comment: gr.Textbox
    annotator: gr.Textbox

    def components(self) -> list[gr.components.Component]:
        return [self.rating, self.corrected, self.categories, self.comment, self.annotator]

    def judgement(self) -> list[gr.components.Component]:
        """The four fields a saved annotation can change (not the annotator)."""
        return [self.rating, self.corrected, self.categories, self.comment]

    def fill(self, rating: int | None = None, corrected: str = "", categories: list[str] | None = None,
             comment: str = "") -> dict:
        """Updates that show a judgement (the corrected text right-to-left when it is)."""
        return {self.rating: None if rating is None else str(rating),
                self.corrected: gr.Textbox(value=corrected, rtl=is_rtl(corrected)),
                self.categories: list(categories or []), self.comment: comment}


def fields(prefix: str, annotator: gr.Textbox | None = None) -> JudgementFields:
    """Lays out the judgement fields; `prefix` makes their element ids unique on the page."""
    cats = load_error_categories()
    with gr.Row():
        rating = gr.Radio(RATINGS, value=None, label="Rating (1 = unusable, 5 = perfect)",
                          elem_id=f"{prefix}-rating")
        if annotator is None:
            annotator = gr.Textbox(label="Annotator", placeholder="your name (remembered in this browser)",
                                   max_length=200, elem_id=f"{prefix}-annotator")
    corrected = gr.Textbox(lines=3, label="Corrected output (starts as the model's)", elem_id=f"{prefix}-corrected")
    categories = gr.CheckboxGroup([(c.label, c.id) for c in cats], label="Error categories",
                                  info="; ".join(f"{c.label}: {c.help}" for c in cats if c.help),
                                  elem_id=f"{prefix}-categories")
    comment = gr.Textbox(lines=2, label="Comment", elem_id=f"{prefix}-comment")
    return JudgementFields(rating, corrected, categories, comment, annotator)


@dataclass
class AnnotationPanel:
    fields: JudgementFields
    save: gr.Button
    status: gr.HTML
    saved_id: gr.State     # the id this result was saved as: saving again updates it


def register(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Mount the panel under every task tab's result; `name` (linked by the page) keeps one annotator name."""
    ctx.panels.append(lambda handle: build(ctx, store, handle, name))


def build(ctx: AppContext, store: AnnotationStore, handle: Any, name: AnnotatorName | None = None) -> AnnotationPanel:
    """The panel for one tab. `handle.record` is a gr.State holding the last RunRecord as a dict (None before the
    first run); a new result prefills the corrected output and clears the judgement."""
    prefix = f"{handle.task}-annotation"
    with gr.Accordion("Annotate this result", open=False, elem_id=prefix):
        f = fields(prefix)
        with gr.Row():
            save = gr.Button("Save annotation", variant="secondary", elem_id=f"{prefix}-save")
        status = gr.HTML(elem_id=f"{prefix}-status")
    saved_id = gr.State(None)
    if name is not None:
        name.remember(f.annotator)
    panel = AnnotationPanel(f, save, status, saved_id)

    def new_result(record):
        if not record:
            return {saved_id: None}
        return {**f.fill(corrected=record.get("output_text", "")), saved_id: None, status: ""}

    def save_it(record, rating, corrected, categories, comment, annotator, ann_id):
        if not record:
            return {status: status_html(NO_RESULT, "warn")}
        try:
            new_id = save_from_record(store, record, rating, corrected, categories, comment, annotator, ann_id)
        except ValueError as e:
            return {status: status_html(f"Not saved: {e}", "error")}
        verb = "Updated" if ann_id == new_id else "Saved"
        return {status: status_html(f"{verb} annotation {new_id[:8]}: it is in the Annotations tab. Saving again "
                                    "updates it."), saved_id: new_id}

    # Off the queue: behind other users' jobs this reset could land after the annotator started on the new
    # result and wipe what they typed.
    handle.record.change(new_result, handle.record, [*f.judgement(), saved_id, status], api_visibility="private",
                         queue=False)
    save.click(save_it, [handle.record, *f.components(), saved_id], [status, saved_id], api_visibility="private")
    return panel
