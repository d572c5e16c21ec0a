"""The annotation panel under every task tab's result: rate, correct, tag errors, mark error spans (ESA or MQM),
comment, save with provenance.

`register(ctx, store)` adds it to `ctx.panels`; each task tab then mounts it in its slot with its `TabHandle`.
The judgement fields (`fields`) are shared with the Annotations and Batch tabs.

Error spans: the output and the input are drawn as HTML with the spans highlighted (`spans.render_html`); the
annotator selects a stretch with the mouse and presses "Add span": `assets/span_track.js` (loaded with the views)
keeps the last selection made in a view, `assets/span_select.js` hands it (UTF-16 offsets and the selected text)
to hidden boxes, and `add_span` converts the offsets to Python
indices, checks the text matches and validates the spans as the store will. The protocol (categories only,
ESA, MQM) is a dropdown of the panel; it starts as `default` of `assets/annotation_protocols.json` (the
project's choice) and stays as chosen for the next results. A result the annotator already judged (the same
output of the same model for the same input, run again or after a reload) comes back with that judgement and
its spans, and saving updates it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ..api import NO_RESULT, input_as_text, provenance, save_from_record
from ..rights import OPEN, Identity, identify
from ...assets import ASSETS
from ...context import AppContext
from ..spans import (Protocols, check_spans, describe, load_protocols, mqm_score, render_html, selected_span,
                     stored_protocol)
from ..store import Annotation, AnnotationStore, ErrorCategory, item_key, load_error_categories
from ...tasks import is_rtl
from ...tabs.common import status_html
from .identity import AnnotatorName

RATINGS = ["1", "2", "3", "4", "5"]
SPAN_COLUMNS = ["#", "side", "from", "to", "text", "category", "severity"]
NO_CATEGORY = "— (no category)"


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
    corrected = gr.Textbox(lines=3, label="Corrected output (starts as the model's)", elem_id=f"{prefix}-corrected")
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
class SpanFields:
    """The error-span components of a panel."""
    protocol: gr.Dropdown
    esa_score: gr.Number
    spans: gr.State        # list of span dicts, sorted as the store keeps them
    table: gr.Dataframe
    status: gr.HTML


@dataclass
class AnnotationPanel:
    fields: JudgementFields
    save: gr.Button
    status: gr.HTML
    saved_id: gr.State     # the id this result was saved as: saving again updates it
    spans: SpanFields | None = None


def record_texts(record: dict[str, Any] | None) -> dict[str, str]:
    """The texts of a tab's result that spans can mark, by side, as the annotation will store them."""
    if not record:
        return {"output": "", "input": ""}
    return {"output": str(record.get("output_text", "")), "input": input_as_text(record.get("input") or {})}


def span_choices(protocols: Protocols, protocol: str, task: str) -> list[tuple[str, str]]:
    """The span category dropdown's choices: MQM's typology, or (ESA) none or one of the task's categories."""
    p = protocols.get(stored_protocol(protocol))
    if p.categories:
        return [(c.label, c.id) for c in p.categories]
    return [(NO_CATEGORY, ""), *((c.label, c.id) for c in load_error_categories(task))]


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


def span_labels(protocols: Protocols, task: str) -> dict[str, str]:
    labels = {c.id: c.label for c in load_error_categories(task)}
    return labels | {c.id: c.label for c in protocols.get("mqm").categories}


def span_table(spans: list[dict[str, Any]], texts: dict[str, str], labels: dict[str, str]) -> pd.DataFrame:
    rows = [{"#": i + 1, **describe(s, texts[s["side"]], labels)} for i, s in enumerate(spans)]
    return pd.DataFrame(rows, columns=SPAN_COLUMNS)


def score_line(protocols: Protocols, protocol: str, spans: list[dict[str, Any]]) -> str:
    """The MQM score of the spans so far, with the weights used; empty for another protocol."""
    if stored_protocol(protocol) != "mqm":
        return ""
    w = protocols.get("mqm").weights
    return status_html(f"MQM score: {mqm_score(spans, protocols):g} penalty points (0 = no error found; minor "
                       f"{w['minor']:g}, major {w['major']:g}, critical {w['critical']:g}, minor punctuation 0.1, "
                       "non-translation 25; Freitag et al. 2021)")


def span_js(ctx: AppContext, name: str) -> str:
    """assets/<name>.js (from the loaded assets, else the file: a test context may carry no scripts)."""
    return ctx.assets.js.get(name) or (ASSETS / f"{name}.js").read_text(encoding="utf-8")


def register(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Mount the panel under every task tab's result; `name` (linked by the page) keeps one annotator name."""
    ctx.panels.append(lambda handle: build(ctx, store, handle, name))


def build(ctx: AppContext, store: AnnotationStore, handle: Any, name: AnnotatorName | None = None) -> AnnotationPanel:
    """The panel for one tab. `handle.record` is a gr.State holding the last RunRecord as a dict (None before the
    first run); a new result prefills the corrected output and clears the judgement."""
    prefix = f"{handle.task}-annotation"
    task = handle.task
    protocols = load_protocols()
    labels = span_labels(protocols, task)
    task_cats = [c.id for c in load_error_categories(task)]
    start_protocol = protocols.default
    with gr.Accordion("Annotate this result", open=False, elem_id=prefix):
        f = fields(prefix, task=task)
        with gr.Group(elem_id=f"{prefix}-spans-box"):
            with gr.Row():
                protocol = gr.Dropdown([(p.label, p.id) for p in protocols.by_id.values()], value=start_protocol,
                                       label="Protocol", elem_id=f"{prefix}-protocol")
                esa_score = gr.Number(None, label="ESA score (0 = nonsense, 100 = perfect)", minimum=0,
                                      maximum=100, precision=0, visible=start_protocol == "esa",
                                      elem_id=f"{prefix}-esa-score")
            protocol_help = gr.Markdown(protocols.get(start_protocol).help, elem_classes=["protocol-help"],
                                        elem_id=f"{prefix}-protocol-help")
            track = span_js(ctx, "span_track")
            view_out = gr.HTML(render_html("", [], "output", title="Output", panel=prefix), js_on_load=track,
                               elem_id=f"{prefix}-view-output")
            view_in = gr.HTML(render_html("", [], "input", title="Input", panel=prefix), js_on_load=track,
                              elem_id=f"{prefix}-view-input")
            with gr.Row():
                span_cat = gr.Dropdown(span_choices(protocols, start_protocol, task),
                                       value=None if protocols.get(start_protocol).categories else "",
                                       label="Span category", elem_id=f"{prefix}-span-category")
                span_sev = gr.Radio([(s.label, s.id) for s in protocols.severities], value="minor",
                                    label="Severity", info=" · ".join(f"{s.label}: {s.help}"
                                                                      for s in protocols.severities),
                                    elem_id=f"{prefix}-span-severity")
            with gr.Row():
                add = gr.Button("Add span (select text above first)", size="sm", elem_id=f"{prefix}-add-span")
                change = gr.Button("Change selected span", size="sm", elem_id=f"{prefix}-change-span")
                remove = gr.Button("Remove selected span", size="sm", elem_id=f"{prefix}-remove-span")
            span_status = gr.HTML(elem_id=f"{prefix}-span-status")
            table = gr.Dataframe(pd.DataFrame(columns=SPAN_COLUMNS), interactive=False, wrap=True,
                                 label="Error spans (select a row to change or remove it)",
                                 elem_id=f"{prefix}-spans")
            mqm_line = gr.HTML(elem_id=f"{prefix}-mqm-score")
            # What span_select.js reads from the page's selection: UTF-16 offsets and the text.
            sel_panel = gr.Textbox(prefix, visible="hidden", elem_id=f"{prefix}-sel-panel")
            sel_side = gr.Textbox(visible="hidden", elem_id=f"{prefix}-sel-side")
            sel_start = gr.Number(-1, visible="hidden", precision=0, elem_id=f"{prefix}-sel-start")
            sel_end = gr.Number(-1, visible="hidden", precision=0, elem_id=f"{prefix}-sel-end")
            sel_text = gr.Textbox(visible="hidden", elem_id=f"{prefix}-sel-text")
        with gr.Row():
            save = gr.Button("Save annotation", variant="secondary", elem_id=f"{prefix}-save")
        status = gr.HTML(elem_id=f"{prefix}-status")
    saved_id = gr.State(None)
    spans = gr.State([])
    picked = gr.State(None)     # index of the span selected in the table
    if name is not None:
        name.remember(f.annotator)
    panel = AnnotationPanel(f, save, status, saved_id, SpanFields(protocol, esa_score, spans, table, span_status))

    def shown(record, spans_v, protocol_v, message="", kind="info"):
        """Everything that shows the spans: state, table, both views, the MQM score, a message."""
        texts = record_texts(record)
        rtl = {side: is_rtl(text) for side, text in texts.items()}
        return {spans: spans_v, picked: None, table: span_table(spans_v, texts, labels),
                view_out: render_html(texts["output"], spans_v, "output", title="Output: select a stretch to mark "
                                      "an error", rtl=rtl["output"], labels=labels, panel=prefix),
                view_in: render_html(texts["input"], spans_v, "input", title="Input: select what the output "
                                     "leaves out (omissions)", rtl=rtl["input"], labels=labels, panel=prefix),
                mqm_line: score_line(protocols, protocol_v, spans_v),
                span_status: status_html(message, kind) if message else ""}

    span_outputs = [spans, picked, table, view_out, view_in, mqm_line, span_status]

    def earlier_shown(record, earlier):
        kept = earlier.protocol or "none"
        return {**f.fill(earlier.rating, earlier.corrected_output, earlier.error_categories, earlier.comment),
                saved_id: earlier.id, esa_score: earlier.esa_score, protocol: kept,
                **shown(record, earlier.spans, kept),
                status: status_html(f"You annotated this output before ({earlier.id[:8]}): your judgement and "
                                    "spans are shown; saving updates it.")}

    def new_result(record, protocol_v=start_protocol, annotator_v=None, request: gr.Request = None):
        if not record:
            return {saved_id: None}
        earlier = earlier_annotation(store, record, annotator_v, identify(request, ctx.settings))
        if earlier is not None:
            return earlier_shown(record, earlier)
        return {**f.fill(corrected=record.get("output_text", "")), saved_id: None, status: "", esa_score: None,
                **shown(record, [], protocol_v)}

    def recall(record, annotator_v, spans_v, ann_id, request: gr.Request = None):
        """The name typed (or restored) after the result came: show that annotator's earlier judgement of it,
        unless spans were marked or the result saved already (nothing typed since is overwritten then)."""
        ident = identify(request, ctx.settings)
        earlier = None if spans_v or ann_id else earlier_annotation(store, record, annotator_v, ident)
        # gr.skip(): nothing changes (an empty dict would be taken as one value for all the outputs)
        return earlier_shown(record, earlier) if earlier is not None else {status: gr.skip()}

    def checked(record, new_spans, protocol_v):
        return check_spans(new_spans, record_texts(record), stored_protocol(protocol_v), task_cats, protocols)

    def add_span(record, side, start, end, selected, category, severity, spans_v, protocol_v):
        if not record:
            return {span_status: status_html(NO_RESULT, "warn")}
        if stored_protocol(protocol_v) == "":
            return {span_status: status_html("Choose ESA or MQM as the protocol to mark error spans.", "warn")}
        texts = record_texts(record)
        if side not in texts or start is None or end is None or start < 0:
            return {span_status: status_html("Select a stretch of the output (or of the input, for an omission) "
                                             "with the mouse first, then press Add span.", "warn")}
        text = texts[side]
        try:
            s, e = selected_span(text, start, end, selected)
        except ValueError as err:
            return {span_status: status_html(f"Span not added: {err}.", "error")}
        new = {"start": s, "end": e, "side": side, "category": category or "", "severity": severity or "minor"}
        try:
            spans_v = checked(record, [*spans_v, new], protocol_v)
        except ValueError as err:
            return {span_status: status_html(f"Span not added: {err}", "error")}
        return shown(record, spans_v, protocol_v, f"Added {severity} span {text[s:e]!r} ({side} {s}–{e}).")

    def pick_span(spans_v, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not 0 <= row < len(spans_v):
            return {picked: None}
        s = spans_v[row]
        return {picked: row, span_cat: s["category"], span_sev: s["severity"],
                span_status: status_html(f"Span {row + 1} selected: change its category or severity above, or "
                                         "remove it.")}

    def change_span(record, index, category, severity, spans_v, protocol_v):
        if index is None or not 0 <= index < len(spans_v):
            return {span_status: status_html("Select a span in the table first.", "warn")}
        new = [dict(s) for s in spans_v]
        new[index] |= {"category": category or "", "severity": severity or "minor"}
        try:
            new = checked(record, new, protocol_v)
        except ValueError as err:
            return {span_status: status_html(f"Span not changed: {err}", "error")}
        return shown(record, new, protocol_v, f"Changed span {index + 1}.")

    def remove_span(record, index, spans_v, protocol_v):
        if index is None or not 0 <= index < len(spans_v):
            return {span_status: status_html("Select a span in the table first.", "warn")}
        return shown(record, [s for i, s in enumerate(spans_v) if i != index], protocol_v,
                     f"Removed span {index + 1}.")

    def switch_protocol(record, spans_v, protocol_v):
        p = protocols.get(stored_protocol(protocol_v))
        out = {**shown(record, spans_v, protocol_v), protocol_help: p.help,
               span_cat: gr.Dropdown(choices=span_choices(protocols, protocol_v, task),
                                     value=None if p.categories else ""),
               esa_score: gr.Number(visible=p.id == "esa")}
        try:
            checked(record, spans_v, protocol_v)
        except ValueError as err:
            out[span_status] = status_html(f"The spans do not fit {p.label}: {err}", "warn")
        return out

    def save_it(record, rating, corrected, categories, comment, annotator, ann_id, protocol_v=None, spans_v=None,
                esa_v=None, request: gr.Request = None):
        if not record:
            return {status: status_html(NO_RESULT, "warn")}
        try:
            new_id = save_from_record(store, record, rating, corrected, categories, comment, annotator, ann_id,
                                      protocol=protocol_v, spans=spans_v,
                                      esa_score=esa_v if stored_protocol(protocol_v) == "esa" else None,
                                      ident=identify(request, ctx.settings))
        except ValueError as e:
            return {status: status_html(f"Not saved: {e}", "error")}
        verb = "Updated" if ann_id == new_id else "Saved"
        saved = store.get(new_id)
        extra = f" MQM score {saved.mqm_score:g}." if saved.mqm_score is not None else ""
        return {status: status_html(f"{verb} annotation {new_id[:8]} with {len(saved.spans)} span(s): it is in the "
                                    f"Annotations tab. Saving again updates it.{extra}"), saved_id: new_id}

    priv = {"api_visibility": "private"}
    # Off the queue: behind other users' jobs this reset could land after the annotator started on the new
    # result and wipe what they typed.
    handle.record.change(new_result, [handle.record, protocol, f.annotator],
                         [*f.judgement(), saved_id, status, esa_score, protocol, *span_outputs], queue=False, **priv)
    selection = [sel_panel, sel_side, sel_start, sel_end, sel_text]
    # No progress overlay: it runs at every keystroke of the name and would cover the rating being clicked.
    f.annotator.change(recall, [handle.record, f.annotator, spans, saved_id],
                       [*f.judgement(), saved_id, status, esa_score, protocol, *span_outputs], queue=False,
                       show_progress="hidden", **priv)
    add.click(None, selection, selection, js=span_js(ctx, "span_select"), queue=False, **priv).then(
        add_span, [handle.record, sel_side, sel_start, sel_end, sel_text, span_cat, span_sev, spans, protocol],
        span_outputs, queue=False, **priv)
    table.select(pick_span, spans, [picked, span_cat, span_sev, span_status], queue=False, **priv)
    change.click(change_span, [handle.record, picked, span_cat, span_sev, spans, protocol], span_outputs,
                 queue=False, **priv)
    remove.click(remove_span, [handle.record, picked, spans, protocol], span_outputs, queue=False, **priv)
    protocol.change(switch_protocol, [handle.record, spans, protocol],
                    [*span_outputs, protocol_help, span_cat, esa_score],
                    queue=False, **priv)
    save.click(save_it, [handle.record, *f.components(), saved_id, protocol, spans, esa_score], [status, saved_id],
               **priv)
    return panel
