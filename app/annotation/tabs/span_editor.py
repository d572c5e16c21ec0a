"""An error-span editor for any set of texts: the Compare tab (sides A, B and the input), the Annotations tab's
editor and the Batch queues (output and input).

The same pieces as the panel under each result (app/annotation/tabs/panel.py): the texts drawn with
`spans.render_html`, a selection made with the mouse handed over by assets/span_track.js and span_select.js,
offsets converted from UTF-16 and checked with `spans.check_spans` as the store will. The texts, the task (for
its categories) and the spans are states the owner of the editor fills with `load(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ...context import AppContext
from ...tabs.common import status_html
from ...tasks import is_rtl
from ..spans import Protocols, check_spans, load_protocols, render_html, selected_span, stored_protocol
from ..store import AnnotationStore
from .panel import SPAN_COLUMNS, score_line, span_choices, span_js, span_labels, span_table


@dataclass
class SpanEditor:
    prefix: str
    titles: dict[str, str]            # side -> title above its view
    protocols: Protocols
    protocol: gr.Dropdown
    esa_score: gr.Number | None
    texts: gr.State                   # side -> text
    task: gr.State
    spans: gr.State
    picked: gr.State
    views: dict[str, gr.HTML]
    category: gr.Dropdown
    severity: gr.Radio
    table: gr.Dataframe
    mqm_line: gr.HTML
    status: gr.HTML

    def outputs(self) -> list:
        """What `show` updates."""
        return [self.spans, self.picked, self.table, *self.views.values(), self.mqm_line, self.status]

    def load_outputs(self) -> list:
        """What `load` updates."""
        extra = [self.esa_score] if self.esa_score is not None else []
        return [*self.outputs(), self.texts, self.task, self.protocol, self.category, *extra]

    def show(self, texts: dict[str, str], task: str, spans: list, protocol: str, message: str = "",
             kind: str = "info") -> dict:
        labels = span_labels(self.protocols, task or None)
        out = {self.spans: spans, self.picked: None,
               self.table: span_table(spans, texts, labels) if spans else pd.DataFrame(columns=SPAN_COLUMNS),
               self.mqm_line: score_line(self.protocols, protocol, spans),
               self.status: status_html(message, kind) if message else ""}
        for side, view in self.views.items():
            text = texts.get(side, "")
            out[view] = render_html(text, spans, side, title=self.titles[side], rtl=is_rtl(text), labels=labels,
                                    panel=self.prefix)
        return out

    def load(self, texts: dict[str, str], task: str, spans: list, protocol: str, esa_score: Any = None,
             message: str = "") -> dict:
        """Everything for a new item: its texts, task, spans and protocol (and ESA score)."""
        p = self.protocols.get(stored_protocol(protocol))
        out = {**self.show(texts, task, spans, p.id, message), self.texts: texts, self.task: task,
               self.protocol: p.id,
               self.category: gr.Dropdown(choices=span_choices(self.protocols, p.id, task or None),
                                          value=None if p.categories else "")}
        if self.esa_score is not None:
            out[self.esa_score] = gr.Number(value=esa_score, visible=p.id == "esa")
        return out


def build(ctx: AppContext, store: AnnotationStore, prefix: str, titles: dict[str, str],
          row: tuple[str, ...] = (), with_esa: bool = False, protocols: Protocols | None = None,
          default_protocol: str | None = None) -> SpanEditor:
    """Lays out the editor: protocol, the views (the sides in `row` next to each other, the rest below), the
    category and severity, Add / Change / Remove, the list of spans. `prefix` makes element ids unique."""
    protocols = protocols or load_protocols()
    start = default_protocol or protocols.default
    track = span_js(ctx, "span_track")
    with gr.Group(elem_id=f"{prefix}-spans-box", elem_classes=["span-editor"]):
        with gr.Row():
            protocol = gr.Dropdown([(p.label, p.id) for p in protocols.by_id.values()], value=start,
                                   label="Protocol for error spans", elem_id=f"{prefix}-protocol")
            esa_score = gr.Number(None, label="ESA score (0 = nonsense, 100 = perfect)", minimum=0, maximum=100,
                                  precision=0, visible=start == "esa", elem_id=f"{prefix}-esa-score") \
                if with_esa else None
        views: dict[str, gr.HTML] = {}

        def view(side: str) -> None:
            views[side] = gr.HTML(render_html("", [], side, title=titles[side], panel=prefix), js_on_load=track,
                                  elem_id=f"{prefix}-view-{side}")
        if row:
            with gr.Row(equal_height=True):
                for side in row:
                    with gr.Column():
                        view(side)
        for side in titles:
            if side not in row:
                view(side)
        with gr.Row():
            category = gr.Dropdown(span_choices(protocols, start, None),
                                   value=None if protocols.get(start).categories else "", label="Span category",
                                   elem_id=f"{prefix}-span-category")
            severity = gr.Radio([(s.label, s.id) for s in protocols.severities], value="minor", label="Severity",
                                elem_id=f"{prefix}-span-severity")
        with gr.Row(elem_classes=["span-buttons"]):
            add = gr.Button("Add span (select text above first)", size="sm", elem_id=f"{prefix}-add-span")
            change = gr.Button("Change selected span", size="sm", elem_id=f"{prefix}-change-span")
            remove = gr.Button("Remove selected span", size="sm", elem_id=f"{prefix}-remove-span")
        status = gr.HTML(elem_id=f"{prefix}-span-status")
        table = gr.Dataframe(pd.DataFrame(columns=SPAN_COLUMNS), interactive=False, wrap=True,
                             label="Error spans (select a row to change or remove it)", elem_id=f"{prefix}-spans")
        mqm_line = gr.HTML(elem_id=f"{prefix}-mqm-score")
        sel_panel = gr.Textbox(prefix, visible="hidden", elem_id=f"{prefix}-sel-panel")
        sel_side = gr.Textbox(visible="hidden", elem_id=f"{prefix}-sel-side")
        sel_start = gr.Number(-1, visible="hidden", precision=0, elem_id=f"{prefix}-sel-start")
        sel_end = gr.Number(-1, visible="hidden", precision=0, elem_id=f"{prefix}-sel-end")
        sel_text = gr.Textbox(visible="hidden", elem_id=f"{prefix}-sel-text")
    ed = SpanEditor(prefix, dict(titles), protocols, protocol, esa_score, gr.State({}), gr.State(""), gr.State([]),
                    gr.State(None), views, category, severity, table, mqm_line, status)

    def edit_checked(texts, task, spans, protocol_v):
        return check_spans(spans, texts, stored_protocol(protocol_v), store.validator.allowed(task or ""),
                           protocols)

    def edit_add_span(texts, task, side, s_start, s_end, selected, cat, sev, spans, protocol_v):
        if not texts or not any(texts.values()):
            return {status: status_html("There is nothing to mark yet.", "warn")}
        if stored_protocol(protocol_v) == "":
            return {status: status_html("Choose ESA or MQM as the protocol to mark error spans.", "warn")}
        if side not in texts or s_start is None or s_end is None or s_start < 0:
            return {status: status_html("Select a stretch of text with the mouse first, then press Add span.",
                                        "warn")}
        text = texts[side]
        try:
            s, e = selected_span(text, s_start, s_end, selected)
        except ValueError as err:
            return {status: status_html(f"Span not added: {err}.", "error")}
        new = {"start": s, "end": e, "side": side, "category": cat or "", "severity": sev or "minor"}
        try:
            spans = edit_checked(texts, task, [*spans, new], protocol_v)
        except ValueError as err:
            return {status: status_html(f"Span not added: {err}", "error")}
        return ed.show(texts, task, spans, protocol_v, f"Added {sev} span {text[s:e]!r} ({side} {s}–{e}).")

    def edit_pick_span(spans, evt: gr.SelectData):
        i = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not 0 <= i < len(spans):
            return {ed.picked: None}
        return {ed.picked: i, category: spans[i]["category"], severity: spans[i]["severity"],
                status: status_html(f"Span {i + 1} selected: change its category or severity, or remove it.")}

    def edit_change_span(texts, task, i, cat, sev, spans, protocol_v):
        if i is None or not 0 <= i < len(spans):
            return {status: status_html("Select a span in the table first.", "warn")}
        new = [dict(s) for s in spans]
        new[i] |= {"category": cat or "", "severity": sev or "minor"}
        try:
            new = edit_checked(texts, task, new, protocol_v)
        except ValueError as err:
            return {status: status_html(f"Span not changed: {err}", "error")}
        return ed.show(texts, task, new, protocol_v, f"Changed span {i + 1}.")

    def edit_remove_span(texts, task, i, spans, protocol_v):
        if i is None or not 0 <= i < len(spans):
            return {status: status_html("Select a span in the table first.", "warn")}
        return ed.show(texts, task, [s for j, s in enumerate(spans) if j != i], protocol_v, f"Removed span {i + 1}.")

    def edit_switch_protocol(texts, task, spans, protocol_v):
        p = protocols.get(stored_protocol(protocol_v))
        out = {**ed.show(texts, task, spans, protocol_v),
               category: gr.Dropdown(choices=span_choices(protocols, protocol_v, task or None),
                                     value=None if p.categories else "")}
        if esa_score is not None:
            out[esa_score] = gr.Number(visible=p.id == "esa")
        try:
            edit_checked(texts, task, spans, protocol_v)
        except ValueError as err:
            out[status] = status_html(f"The spans do not fit {p.label}: {err}", "warn")
        return out

    priv = {"api_visibility": "private", "queue": False}
    selection = [sel_panel, sel_side, sel_start, sel_end, sel_text]
    add.click(None, selection, selection, js=span_js(ctx, "span_select"), **priv).then(
        edit_add_span,
        [ed.texts, ed.task, sel_side, sel_start, sel_end, sel_text, category, severity, ed.spans, protocol],
        ed.outputs(), **priv)
    table.select(edit_pick_span, ed.spans, [ed.picked, category, severity, status], **priv)
    change.click(edit_change_span, [ed.texts, ed.task, ed.picked, category, severity, ed.spans, protocol],
                 ed.outputs(), **priv)
    remove.click(edit_remove_span, [ed.texts, ed.task, ed.picked, ed.spans, protocol], ed.outputs(), **priv)
    protocol.input(edit_switch_protocol, [ed.texts, ed.task, ed.spans, protocol],
                   [*ed.outputs(), category, *([esa_score] if esa_score is not None else [])], **priv)
    return ed
