"""An error-span editor for any set of texts: the Compare tab (sides A, B and the input), the Annotations tab's
editor, the Batch queues (output and input) and the panel under each result.

The texts are drawn with `spans.render_html`; a selection made with the mouse is handed over by
assets/span_track.js and span_select.js, its offsets converted from UTF-16 and checked with `spans.check_spans` as
the store will. The texts, the task (for its categories) and the spans are states the owner of the editor fills
with `load(...)`. Layout (`build`), then the handlers (plain functions of the store, the identity and the values,
returning {name: value}), then `wire`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ...assets import ASSETS
from ...context import AppContext
from ...settings import Settings
from ...tabs.common import status_html
from ...tasks import is_rtl
from ..rights import Identity
from ..spans import (Protocols, check_spans, describe, load_protocols, mqm_score, render_html, selected_span,
                     stored_protocol)
from ..store import AnnotationStore, load_error_categories
from .wiring import PRIVATE, bind

SPAN_COLUMNS = ["#", "side", "from", "to", "text", "category", "severity"]
NO_CATEGORY = "— (no category)"


def span_choices(protocols: Protocols, protocol: str, task: str | None) -> list[tuple[str, str]]:
    """The span category dropdown's choices: MQM's typology, or (ESA) none or one of the task's categories."""
    p = protocols.get(stored_protocol(protocol))
    if p.categories:
        return [(c.label, c.id) for c in p.categories]
    return [(NO_CATEGORY, ""), *((c.label, c.id) for c in load_error_categories(task))]


def span_labels(protocols: Protocols, task: str | None) -> dict[str, str]:
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


@dataclass(frozen=True)
class Frame:
    """What the editor's handlers draw with: the element-id prefix, the title over each side's view, the
    protocols, and the messages of its owner (the panel words them for a result)."""
    prefix: str
    titles: dict[str, str]            # side -> title above its view
    protocols: Protocols
    with_esa: bool = False            # an ESA score box beside the protocol
    nothing: str = "There is nothing to mark yet."
    select_first: str = "Select a stretch of text with the mouse first, then press Add span."
    pick_hint: str = "change its category or severity, or remove it."


@dataclass
class SpanEditor:
    """The editor's components. `texts` and `task` are None where the owner keeps them itself (the panel)."""
    frame: Frame
    protocol: gr.Dropdown
    esa_score: gr.Number | None
    texts: gr.State | None            # side -> text
    task: gr.State | None
    spans: gr.State
    picked: gr.State
    views: dict[str, gr.HTML]
    category: gr.Dropdown
    severity: gr.Radio
    table: gr.Dataframe
    mqm_line: gr.HTML
    status: gr.HTML
    buttons: dict[str, gr.Button]     # add, change, remove
    selection: list                   # what span_select.js fills: panel, side, start, end, text

    @property
    def protocols(self) -> Protocols:
        return self.frame.protocols

    def outputs(self) -> list:
        """What `show` updates."""
        return [self.spans, self.picked, self.table, *self.views.values(), self.mqm_line, self.status]

    def load_outputs(self) -> list:
        """What `load` updates."""
        extra = [self.esa_score] if self.esa_score is not None else []
        return [*self.outputs(), self.texts, self.task, self.protocol, self.category, *extra]


# ---------------------------------------------------------------------------------------------------------------
# What the owners show (names relative to the editor: put them `under` its place in the owner's layout)


def show(frame: Frame, texts: dict[str, str], task: str, spans: list, protocol: str, message: str = "",
         kind: str = "info") -> dict:
    """Everything that shows the spans: state, table, every side's view, the MQM score, a message."""
    labels = span_labels(frame.protocols, task or None)
    out = {"spans": spans, "picked": None,
           "table": span_table(spans, texts, labels) if spans else pd.DataFrame(columns=SPAN_COLUMNS),
           "mqm_line": score_line(frame.protocols, protocol, spans),
           "status": status_html(message, kind) if message else ""}
    for side, title in frame.titles.items():
        text = texts.get(side, "")
        out[f"views.{side}"] = render_html(text, spans, side, title=title, rtl=is_rtl(text), labels=labels,
                                           panel=frame.prefix)
    return out


def load(frame: Frame, texts: dict[str, str], task: str, spans: list, protocol: str, esa_score: Any = None,
         message: str = "") -> dict:
    """Everything for a new item: its texts, task, spans and protocol (and ESA score, where the editor has one)."""
    p = frame.protocols.get(stored_protocol(protocol))
    out = {**show(frame, texts, task, spans, p.id, message), "texts": texts, "task": task, "protocol": p.id,
           "category": gr.Dropdown(choices=span_choices(frame.protocols, p.id, task or None),
                                   value=None if p.categories else "")}
    if frame.with_esa:
        out["esa_score"] = gr.Number(value=esa_score, visible=p.id == "esa")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The handlers


def checked(store: AnnotationStore, frame: Frame, texts: dict, task: str, spans: list, protocol: str) -> list:
    return check_spans(spans, texts, stored_protocol(protocol), store.validator.allowed(task or ""),
                       frame.protocols)


def edit_add_span(store: AnnotationStore, ident: Identity, texts, task, side, s_start, s_end, selected, cat, sev, spans,
             protocol_v, *, frame: Frame) -> dict:
    if not texts or not any(texts.values()):
        return {"status": status_html(frame.nothing, "warn")}
    if stored_protocol(protocol_v) == "":
        return {"status": status_html("Choose ESA or MQM as the protocol to mark error spans.", "warn")}
    if side not in texts or s_start is None or s_end is None or s_start < 0:
        return {"status": status_html(frame.select_first, "warn")}
    text = texts[side]
    try:
        s, e = selected_span(text, s_start, s_end, selected)
    except ValueError as err:
        return {"status": status_html(f"Span not added: {err}.", "error")}
    new = {"start": s, "end": e, "side": side, "category": cat or "", "severity": sev or "minor"}
    try:
        spans = checked(store, frame, texts, task, [*spans, new], protocol_v)
    except ValueError as err:
        return {"status": status_html(f"Span not added: {err}", "error")}
    return show(frame, texts, task, spans, protocol_v, f"Added {sev} span {text[s:e]!r} ({side} {s}–{e}).")


def edit_pick_span(store: AnnotationStore, ident: Identity, spans, index, *, frame: Frame) -> dict:
    """A row of the span table selected (`index`: the table's [row, column], or the row)."""
    i = index[0] if isinstance(index, (list, tuple)) else index
    if not 0 <= i < len(spans):
        return {"picked": None}
    return {"picked": i, "category": spans[i]["category"], "severity": spans[i]["severity"],
            "status": status_html(f"Span {i + 1} selected: {frame.pick_hint}")}


def edit_change_span(store: AnnotationStore, ident: Identity, texts, task, i, cat, sev, spans, protocol_v, *,
                frame: Frame) -> dict:
    if i is None or not 0 <= i < len(spans):
        return {"status": status_html("Select a span in the table first.", "warn")}
    new = [dict(s) for s in spans]
    new[i] |= {"category": cat or "", "severity": sev or "minor"}
    try:
        new = checked(store, frame, texts, task, new, protocol_v)
    except ValueError as err:
        return {"status": status_html(f"Span not changed: {err}", "error")}
    return show(frame, texts, task, new, protocol_v, f"Changed span {i + 1}.")


def edit_remove_span(store: AnnotationStore, ident: Identity, texts, task, i, spans, protocol_v, *,
                frame: Frame) -> dict:
    if i is None or not 0 <= i < len(spans):
        return {"status": status_html("Select a span in the table first.", "warn")}
    return show(frame, texts, task, [s for j, s in enumerate(spans) if j != i], protocol_v, f"Removed span {i + 1}.")


def edit_switch_protocol(store: AnnotationStore, ident: Identity, texts, task, spans, protocol_v, *,
                    frame: Frame) -> dict:
    p = frame.protocols.get(stored_protocol(protocol_v))
    out = {**show(frame, texts, task, spans, protocol_v),
           "category": gr.Dropdown(choices=span_choices(frame.protocols, protocol_v, task or None),
                                   value=None if p.categories else "")}
    if frame.with_esa:
        out["esa_score"] = gr.Number(visible=p.id == "esa")
    try:
        checked(store, frame, texts, task, spans, protocol_v)
    except ValueError as err:
        out["status"] = status_html(f"The spans do not fit {p.label}: {err}", "warn")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring


def build(ctx: AppContext, store: AnnotationStore, prefix: str, titles: dict[str, str],
          row: tuple[str, ...] = (), with_esa: bool = False, protocols: Protocols | None = None,
          default_protocol: str | None = None) -> SpanEditor:
    """Lays out the editor and wires its own buttons (the owner loads items into it with `load`)."""
    ed = layout(ctx, Frame(prefix, dict(titles), protocols or load_protocols(), with_esa), row, default_protocol)
    wire(ed, store, ctx.settings, span_js(ctx, "span_select"))
    return ed


def layout(ctx: AppContext, frame: Frame, row: tuple[str, ...] = (), default_protocol: str | None = None) -> SpanEditor:
    """The protocol, the views (the sides in `row` next to each other, the rest below), the category and severity,
    Add / Change / Remove, the list of spans. `frame.prefix` makes element ids unique."""
    prefix, protocols = frame.prefix, frame.protocols
    start = default_protocol or protocols.default
    track = span_js(ctx, "span_track")
    with gr.Group(elem_id=f"{prefix}-spans-box", elem_classes=["span-editor"]):
        with gr.Row():
            protocol = gr.Dropdown([(p.label, p.id) for p in protocols.by_id.values()], value=start,
                                   label="Protocol for error spans", elem_id=f"{prefix}-protocol")
            esa_score = gr.Number(None, label="ESA score (0 = nonsense, 100 = perfect)", minimum=0, maximum=100,
                                  precision=0, visible=start == "esa", elem_id=f"{prefix}-esa-score") \
                if frame.with_esa else None
        views = {}
        if row:
            with gr.Row(equal_height=True):
                for side in row:
                    with gr.Column():
                        views[side] = view(frame, side, track)
        views |= {side: view(frame, side, track) for side in frame.titles if side not in row}
        with gr.Row():
            category = gr.Dropdown(span_choices(protocols, start, None),
                                   value=None if protocols.get(start).categories else "", label="Span category",
                                   elem_id=f"{prefix}-span-category")
            severity = gr.Radio([(s.label, s.id) for s in protocols.severities], value="minor", label="Severity",
                                elem_id=f"{prefix}-span-severity")
        with gr.Row(elem_classes=["span-buttons"]):
            buttons = span_buttons(prefix)
        status = gr.HTML(elem_id=f"{prefix}-span-status")
        table = gr.Dataframe(pd.DataFrame(columns=SPAN_COLUMNS), interactive=False, wrap=True,
                             label="Error spans (select a row to change or remove it)", elem_id=f"{prefix}-spans")
        mqm_line = gr.HTML(elem_id=f"{prefix}-mqm-score")
        selection = selection_boxes(prefix)
    return SpanEditor(frame, protocol, esa_score, gr.State({}), gr.State(""), gr.State([]), gr.State(None),
                      {side: views[side] for side in frame.titles}, category, severity, table, mqm_line, status,
                      buttons, selection)


def view(frame: Frame, side: str, track: str) -> gr.HTML:
    return gr.HTML(render_html("", [], side, title=frame.titles[side], panel=frame.prefix), js_on_load=track,
                   elem_id=f"{frame.prefix}-view-{side}")


def span_buttons(prefix: str) -> dict[str, gr.Button]:
    return {"add": gr.Button("Add span (select text above first)", size="sm", elem_id=f"{prefix}-add-span"),
            "change": gr.Button("Change selected span", size="sm", elem_id=f"{prefix}-change-span"),
            "remove": gr.Button("Remove selected span", size="sm", elem_id=f"{prefix}-remove-span")}


def selection_boxes(prefix: str) -> list:
    """Hidden boxes span_select.js fills from the page's selection: panel, side, UTF-16 offsets, the text."""
    return [gr.Textbox(prefix, visible="hidden", elem_id=f"{prefix}-sel-panel"),
            gr.Textbox(visible="hidden", elem_id=f"{prefix}-sel-side"),
            gr.Number(-1, visible="hidden", precision=0, elem_id=f"{prefix}-sel-start"),
            gr.Number(-1, visible="hidden", precision=0, elem_id=f"{prefix}-sel-end"),
            gr.Textbox(visible="hidden", elem_id=f"{prefix}-sel-text")]


def wire(ed: SpanEditor, store: AnnotationStore, settings: Settings, select_js: str) -> None:
    def on(handler):
        return bind(functools.partial(handler, frame=ed.frame), ed, store, settings,
                    event="index" if handler is edit_pick_span else "")

    priv = {**PRIVATE, "queue": False}
    sel = ed.selection
    ed.buttons["add"].click(None, sel, sel, js=select_js, **priv).then(
        on(edit_add_span), [ed.texts, ed.task, *sel[1:], ed.category, ed.severity, ed.spans, ed.protocol], ed.outputs(),
        **priv)
    ed.table.select(on(edit_pick_span), ed.spans, [ed.picked, ed.category, ed.severity, ed.status], **priv)
    ed.buttons["change"].click(on(edit_change_span), [ed.texts, ed.task, ed.picked, ed.category, ed.severity,
                                                      ed.spans, ed.protocol], ed.outputs(), **priv)
    ed.buttons["remove"].click(on(edit_remove_span), [ed.texts, ed.task, ed.picked, ed.spans, ed.protocol],
                               ed.outputs(), **priv)
    ed.protocol.input(on(edit_switch_protocol), [ed.texts, ed.task, ed.spans, ed.protocol],
                      [*ed.outputs(), ed.category, *([ed.esa_score] if ed.frame.with_esa else [])], **priv)
