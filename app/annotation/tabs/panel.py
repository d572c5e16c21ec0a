"""The annotation panel under every task tab's result: rate, correct, tag errors, mark error spans (ESA or MQM),
comment, save with provenance.

`register(ctx, store)` adds it to `ctx.panels`; each task tab then mounts it in its slot with its `TabHandle`.
The judgement fields (`fields`) are shared with the Annotations and Batch tabs.

Error spans: the output and the input are drawn as HTML with the spans highlighted (`spans.render_html`); the
annotator selects a stretch with the mouse and presses "Add span": `assets/span_track.js` (loaded with the views)
keeps the last selection made in a view, `assets/span_select.js` hands it (UTF-16 offsets and the selected text)
to hidden boxes, and `add_span` converts the offsets to Python indices, checks the text matches and validates the
spans as the store will (the span editor's handlers, on the result's texts). The protocol (categories only, ESA,
MQM) is a dropdown of the panel; it starts as `default` of `assets/annotation_protocols.json` (the project's
choice) and stays as chosen for the next results. A result the annotator already judged (the same output of the
same model for the same input, run again or after a reload) comes back with that judgement and its spans, and
saving updates it.

Layout (`layout`), the handlers (plain functions of the store, the identity and the values, returning
{name: value}; the panel's task as a keyword), then `wire`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ...context import AppContext
from ...settings import Settings
from ...tabs.common import status_html
from ...tasks import is_rtl
from ..api import NO_RESULT, input_as_text, provenance, save_from_record
from ..rights import OPEN, Identity
from ..spans import Protocols, load_protocols, render_html, stored_protocol
from ..store import Annotation, AnnotationStore, ErrorCategory, item_key, load_error_categories
from . import span_editor
from .identity import AnnotatorName
from .span_editor import SPAN_COLUMNS, Frame, SpanEditor, span_choices, span_js
from .wiring import PRIVATE, bind, under

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


def judgement_values(rating: int | None = None, corrected: str = "", categories: list[str] | None = None,
                     comment: str = "") -> dict:
    """What shows a judgement in `JudgementFields`, by field name (the corrected text right-to-left when it is)."""
    return {"rating": None if rating is None else str(rating),
            "corrected": gr.Textbox(value=corrected, rtl=is_rtl(corrected)),
            "categories": list(categories or []), "comment": comment}


def category_help(cats: list[ErrorCategory]) -> str:
    """One Markdown line per category: its label in bold, then its help text."""
    return "\n".join(f"- **{c.label}**: {c.help}" for c in cats if c.help)


def fields(prefix: str, annotator: gr.Textbox | None = None, task: str | None = None) -> JudgementFields:
    """Lays out the judgement fields; `prefix` makes their element ids unique on the page. `task` picks its
    error categories (assets/error_categories.json); without one every category is offered."""
    cats = load_error_categories(task)
    with gr.Row():
        rating = gr.Radio(RATINGS, value=None, label="Rating (1 = unusable, 5 = perfect)",
                          elem_id=f"{prefix}-rating")
        if annotator is None:
            annotator = gr.Textbox(label="Annotator", placeholder="your name (remembered in this browser)",
                                   max_length=200, elem_id=f"{prefix}-annotator")
    corrected = gr.Textbox(lines=3, label="Corrected output (empty: no correction given)",
                           placeholder="type the output as it should read", elem_id=f"{prefix}-corrected")
    categories = gr.CheckboxGroup([(c.label, c.id) for c in cats], label="Error categories",
                                  elem_id=f"{prefix}-categories")
    # Each category's help on its own line under the group (a CheckboxGroup has one `info` for all choices).
    if task is None:
        with gr.Accordion("What the categories mean", open=False):
            gr.Markdown(category_help(cats), elem_classes=["category-help"], elem_id=f"{prefix}-category-help")
    else:
        gr.Markdown(category_help(cats), elem_classes=["category-help"], elem_id=f"{prefix}-category-help")
    comment = gr.Textbox(lines=2, label="Comment", elem_id=f"{prefix}-comment")
    return JudgementFields(rating, corrected, categories, comment, annotator)


@dataclass
class AnnotationPanel:
    task: str
    fields: JudgementFields
    editor: SpanEditor        # its texts and task are the result's (no states of their own)
    protocol_help: gr.Markdown
    save: gr.Button
    status: gr.HTML
    saved_id: gr.State        # the id this result was saved as: saving again updates it


# ---------------------------------------------------------------------------------------------------------------
# The work


def record_texts(record: dict[str, Any] | None) -> dict[str, str]:
    """The texts of a tab's result that spans can mark, by side, as the annotation will store them."""
    if not record:
        return {"output": "", "input": ""}
    return {"output": str(record.get("output_text", "")), "input": input_as_text(record.get("input") or {})}


def panel_frame(task: str, protocols: Protocols | None = None) -> Frame:
    """The span editor's frame for the panel under `task`'s result, worded for a result."""
    return Frame(f"{task}-annotation", {"output": "Output: select a stretch to mark an error",
                                        "input": "Input: select what the output leaves out (omissions)"},
                 protocols or load_protocols(), with_esa=True, nothing=NO_RESULT,
                 select_first="Select a stretch of the output (or of the input, for an omission) with the mouse "
                              "first, then press Add span.",
                 pick_hint="change its category or severity above, or remove it.")


def earlier_annotation(store: AnnotationStore, record: dict[str, Any] | None, annotator: Any,
                       ident: Identity = OPEN) -> Annotation | None:
    """The newest annotation `annotator` saved of this very output (same task, model, input and output), if any:
    a result run again (after a reload, say) shows that judgement and its spans, and saving updates it. On a
    protected deployment: the signed-in account's own (a typed name shows nobody else's work)."""
    name = ident.annotator(annotator)
    if not record or not name:
        return None
    p = provenance(record)
    key = item_key(p["task"], p["model_id"], p["input"], p["output"])
    found = store.query(item_key=key, owner=ident.user) if ident.protected else \
        store.query(item_key=key, annotator=name)
    return found[-1] if found else None


def spans_shown(frame: Frame, task: str, record, spans_v, protocol_v, message="", kind="info") -> dict:
    """Everything that shows the spans of the result: state, table, both views, the MQM score, a message."""
    return under("editor", span_editor.show(frame, record_texts(record), task, spans_v, protocol_v, message, kind))


def earlier_shown(frame: Frame, task: str, record, earlier: Annotation) -> dict:
    kept = earlier.protocol or "none"
    return {**under("fields", judgement_values(earlier.rating, earlier.corrected_output, earlier.error_categories,
                                               earlier.comment)),
            "saved_id": earlier.id, "editor.esa_score": earlier.esa_score, "editor.protocol": kept,
            **spans_shown(frame, task, record, earlier.spans, kept),
            "status": status_html(f"You annotated this output before ({earlier.id[:8]}): your judgement and "
                                  "spans are shown; saving updates it.")}


# ---------------------------------------------------------------------------------------------------------------
# The handlers (`task`: the tab's; `frame`: its span editor's, made from the task when not given)


def new_result(store: AnnotationStore, ident: Identity, record, protocol_v=None, annotator_v=None, *, task: str,
               frame: Frame | None = None) -> dict:
    """A new result: the annotator's earlier judgement of it, or a fresh, empty one (the corrected output too)."""
    frame = frame or panel_frame(task)
    if not record:
        return {"saved_id": None}
    earlier = earlier_annotation(store, record, annotator_v, ident)
    if earlier is not None:
        return earlier_shown(frame, task, record, earlier)
    return {**under("fields", judgement_values()), "saved_id": None,
            "status": "", "editor.esa_score": None,
            **spans_shown(frame, task, record, [], protocol_v or frame.protocols.default)}


def recall(store: AnnotationStore, ident: Identity, record, annotator_v, spans_v, ann_id, *, task: str,
           frame: Frame | None = None) -> dict:
    """The name typed (or restored) after the result came: show that annotator's earlier judgement of it,
    unless spans were marked or the result saved already (nothing typed since is overwritten then)."""
    earlier = None if spans_v or ann_id else earlier_annotation(store, record, annotator_v, ident)
    # gr.skip(): nothing changes (an empty dict would be taken as one value for all the outputs)
    return earlier_shown(frame or panel_frame(task), task, record, earlier) if earlier is not None else \
        {"status": gr.skip()}


def add_span(store: AnnotationStore, ident: Identity, record, side, start, end, selected, category, severity,
             spans_v, protocol_v, *, task: str, frame: Frame | None = None) -> dict:
    if not record:
        return {"editor.status": status_html(NO_RESULT, "warn")}
    out = span_editor.edit_add_span(store, ident, record_texts(record), task, side, start, end, selected, category,
                                    severity, spans_v, protocol_v, frame=frame or panel_frame(task))
    return under("editor", out)


def pick_span(store: AnnotationStore, ident: Identity, spans_v, index, *, task: str,
              frame: Frame | None = None) -> dict:
    return under("editor", span_editor.edit_pick_span(store, ident, spans_v, index, frame=frame or panel_frame(task)))


def change_span(store: AnnotationStore, ident: Identity, record, index, category, severity, spans_v, protocol_v, *,
                task: str, frame: Frame | None = None) -> dict:
    out = span_editor.edit_change_span(store, ident, record_texts(record), task, index, category, severity, spans_v,
                                       protocol_v, frame=frame or panel_frame(task))
    return under("editor", out)


def remove_span(store: AnnotationStore, ident: Identity, record, index, spans_v, protocol_v, *, task: str,
                frame: Frame | None = None) -> dict:
    out = span_editor.edit_remove_span(store, ident, record_texts(record), task, index, spans_v, protocol_v,
                                       frame=frame or panel_frame(task))
    return under("editor", out)


def switch_protocol(store: AnnotationStore, ident: Identity, record, spans_v, protocol_v, *, task: str,
                    frame: Frame | None = None) -> dict:
    frame = frame or panel_frame(task)
    out = span_editor.edit_switch_protocol(store, ident, record_texts(record), task, spans_v, protocol_v, frame=frame)
    return {**under("editor", out), "protocol_help": frame.protocols.get(stored_protocol(protocol_v)).help}


def save_it(store: AnnotationStore, ident: Identity, record, rating, corrected, categories, comment, annotator,
            ann_id, protocol_v=None, spans_v=None, esa_v=None) -> dict:
    if not record:
        return {"status": status_html(NO_RESULT, "warn")}
    try:
        new_id = save_from_record(store, record, rating, corrected, categories, comment, annotator, ann_id,
                                  protocol=protocol_v, spans=spans_v,
                                  esa_score=esa_v if stored_protocol(protocol_v) == "esa" else None, ident=ident)
    except ValueError as e:
        return {"status": status_html(f"Not saved: {e}", "error")}
    verb = "Updated" if ann_id == new_id else "Saved"
    saved = store.get(new_id)
    extra = f" MQM score {saved.mqm_score:g}." if saved.mqm_score is not None else ""
    return {"status": status_html(f"{verb} annotation {new_id[:8]} with {len(saved.spans)} span(s): it is in the "
                                  f"Annotations tab. Saving again updates it.{extra}"), "saved_id": new_id}


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring


def register(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Mount the panel under every task tab's result; `name` (linked by the page) keeps one annotator name."""
    ctx.panels.append(lambda handle: build(ctx, store, handle, name))


def build(ctx: AppContext, store: AnnotationStore, handle: Any, name: AnnotatorName | None = None) -> AnnotationPanel:
    """The panel for one tab. `handle.record` is a gr.State holding the last RunRecord as a dict (None before the
    first run); a new result clears the judgement, the corrected output too."""
    panel = layout(ctx, handle.task)
    if name is not None:
        name.remember(panel.fields.annotator)
    wire(panel, handle.record, store, ctx.settings, span_js(ctx, "span_select"))
    return panel


def layout(ctx: AppContext, task: str) -> AnnotationPanel:
    frame = panel_frame(task)
    prefix, protocols, start = frame.prefix, frame.protocols, frame.protocols.default
    with gr.Accordion("Annotate this result", open=False, elem_id=prefix):
        f = fields(prefix, task=task)
        with gr.Group(elem_id=f"{prefix}-spans-box"):
            with gr.Row():
                protocol = gr.Dropdown([(p.label, p.id) for p in protocols.by_id.values()], value=start,
                                       label="Protocol", elem_id=f"{prefix}-protocol")
                esa_score = gr.Number(None, label="ESA score (0 = nonsense, 100 = perfect)", minimum=0,
                                      maximum=100, precision=0, visible=start == "esa",
                                      elem_id=f"{prefix}-esa-score")
            protocol_help = gr.Markdown(protocols.get(start).help, elem_classes=["protocol-help"],
                                        elem_id=f"{prefix}-protocol-help")
            track = span_js(ctx, "span_track")
            views = {side: gr.HTML(render_html("", [], side, title=side.title(), panel=prefix), js_on_load=track,
                                   elem_id=f"{prefix}-view-{side}") for side in ("output", "input")}
            with gr.Row():
                category = gr.Dropdown(span_choices(protocols, start, task),
                                       value=None if protocols.get(start).categories else "",
                                       label="Span category", elem_id=f"{prefix}-span-category")
                severity = gr.Radio([(s.label, s.id) for s in protocols.severities], value="minor",
                                    label="Severity", info=" · ".join(f"{s.label}: {s.help}"
                                                                      for s in protocols.severities),
                                    elem_id=f"{prefix}-span-severity")
            with gr.Row():
                buttons = span_editor.span_buttons(prefix)
            span_status = gr.HTML(elem_id=f"{prefix}-span-status")
            table = gr.Dataframe(pd.DataFrame(columns=SPAN_COLUMNS), interactive=False, wrap=True,
                                 label="Error spans (select a row to change or remove it)",
                                 elem_id=f"{prefix}-spans")
            mqm_line = gr.HTML(elem_id=f"{prefix}-mqm-score")
            selection = span_editor.selection_boxes(prefix)
        with gr.Row():
            save = gr.Button("Save annotation", variant="secondary", elem_id=f"{prefix}-save")
        status = gr.HTML(elem_id=f"{prefix}-status")
    editor = SpanEditor(frame, protocol, esa_score, None, None, gr.State([]), gr.State(None), views, category,
                        severity, table, mqm_line, span_status, buttons, selection)
    return AnnotationPanel(task, f, editor, protocol_help, save, status, gr.State(None))


def wire(p: AnnotationPanel, record: gr.State, store: AnnotationStore, settings: Settings, select_js: str) -> None:
    ed, f = p.editor, p.fields

    def on(handler, **kw):
        return bind(functools.partial(handler, **kw), p, store, settings,
                    event="index" if handler is pick_span else "")

    def spans_on(handler):
        return on(handler, task=p.task, frame=ed.frame)

    priv = {**PRIVATE, "queue": False}
    judged = [*f.judgement(), p.saved_id, p.status, ed.esa_score, ed.protocol, *ed.outputs()]
    # Off the queue: behind other users' jobs this reset could land after the annotator started on the new
    # result and wipe what they typed.
    record.change(spans_on(new_result), [record, ed.protocol, f.annotator], judged, **priv)
    # No progress overlay: it runs at every keystroke of the name and would cover the rating being clicked.
    f.annotator.change(spans_on(recall), [record, f.annotator, ed.spans, p.saved_id], judged, show_progress="hidden",
                       **priv)
    sel = ed.selection
    ed.buttons["add"].click(None, sel, sel, js=select_js, **priv).then(
        spans_on(add_span), [record, *sel[1:], ed.category, ed.severity, ed.spans, ed.protocol], ed.outputs(), **priv)
    ed.table.select(spans_on(pick_span), ed.spans, [ed.picked, ed.category, ed.severity, ed.status], **priv)
    ed.buttons["change"].click(spans_on(change_span), [record, ed.picked, ed.category, ed.severity, ed.spans,
                                                       ed.protocol], ed.outputs(), **priv)
    ed.buttons["remove"].click(spans_on(remove_span), [record, ed.picked, ed.spans, ed.protocol], ed.outputs(),
                               **priv)
    ed.protocol.change(spans_on(switch_protocol), [record, ed.spans, ed.protocol],
                       [*ed.outputs(), p.protocol_help, ed.category, ed.esa_score], **priv)
    p.save.click(on(save_it), [record, *f.components(), p.saved_id, ed.protocol, ed.spans, ed.esa_score],
                 [p.status, p.saved_id], **PRIVATE)
