"""The Annotations tab: every saved judgement in a filtered table; edit, delete, export, import, agreement."""
from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.context import Context
import pandas as pd

from ..agreement import agreement_frame
from ..api import EXPORT_FORMATS, export, filters, judgement
from ...context import AppContext
from ..store import AnnotationStore
from ...tasks import is_rtl
from .panel import fields, remember_annotator
from ...tabs.common import status_html

ALL = "(all)"
# What the table shows (the full record is in the editor and in exports).
TABLE_COLUMNS = ["id", "task", "model_id", "annotator", "rating", "error_categories", "output", "corrected_output",
                 "comment", "created_at"]
PREVIEW_CHARS = 200
# Narrow columns for short values so the texts get the room (the header words would otherwise wrap per letter).
COLUMN_WIDTHS = ["9%", "9%", "13%", "8%", "6%", "10%", "15%", "12%", "10%", "8%"]


BATCH_MARK = "<!-- batch"


def help_text(ctx: AppContext, part: str) -> str:
    """The Annotations ("annotations") or Batch ("batch") part of `assets/help/annotation.md`."""
    text = ctx.assets.help.get("annotation", "")
    before, _, after = text.partition(BATCH_MARK)
    return before.strip() if part == "annotations" else after.partition("-->")[2].strip()


def table_frame(store: AnnotationStore, **query: Any) -> pd.DataFrame:
    """The table's rows: newest first as the store gives them, long texts cut for display, every cell text."""
    df = store.query_frame(**query)[TABLE_COLUMNS].copy()
    for col in ("output", "corrected_output", "comment"):
        df[col] = df[col].map(lambda t: t if len(t) <= PREVIEW_CHARS else t[:PREVIEW_CHARS] + "…")
    df["rating"] = df["rating"].map(lambda r: "" if pd.isna(r) else str(int(r)))
    return df


def agreement_tables(store: AnnotationStore, **query: Any) -> dict[str, pd.DataFrame]:
    records = store.query(**query)
    return {"task": agreement_frame(records, by="task"), "model": agreement_frame(records, by="model_id")}


def build(ctx: AppContext, store: AnnotationStore) -> None:
    """Lays out the tab (call inside a `gr.Tab`) and wires its events."""
    gr.Markdown(help_text(ctx, "annotations"), elem_classes=["tab-help"])
    status = gr.HTML(elem_id="annotations-status")

    with gr.Accordion("Filters", open=True):
        with gr.Row():
            task = gr.Dropdown([ALL], value=ALL, label="Task", elem_id="annotations-task")
            model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="annotations-model")
            annotator_f = gr.Dropdown([ALL], value=ALL, label="Annotator", elem_id="annotations-annotator")
        with gr.Row():
            since = gr.Textbox(label="From (YYYY-MM-DD, UTC)", max_length=40, elem_id="annotations-since")
            until = gr.Textbox(label="Until (YYYY-MM-DD, inclusive)", max_length=40, elem_id="annotations-until")
            min_rating = gr.Slider(1, 5, value=1, step=1, label="Lowest rating")
            max_rating = gr.Slider(1, 5, value=5, step=1, label="Highest rating",
                                   info="1–5 shows unrated annotations too")
        refresh = gr.Button("Apply filters / refresh", elem_id="annotations-refresh")
    filter_inputs = [task, model, annotator_f, since, until, min_rating, max_rating]

    summary = gr.HTML()
    table = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), interactive=False, wrap=True, max_height=420,
                         column_widths=COLUMN_WIDTHS,
                         datatype="str", label="Annotations (select a row to edit it)", elem_id="annotations-table")

    with gr.Accordion("Edit the selected annotation", open=True):
        selected = gr.State(None)
        with gr.Row():
            sel_input = gr.Textbox(label="Input", lines=3, interactive=False)
            sel_output = gr.Textbox(label="Model output", lines=3, interactive=False)
        provenance = gr.JSON(label="Provenance", open=False)
        f = fields("annotations-edit")
        with gr.Row():
            update = gr.Button("Save changes", variant="primary", elem_id="annotations-update")
            delete = gr.Button("Delete", variant="stop", elem_id="annotations-delete")
    remember_annotator(f.annotator)

    with gr.Accordion("Export and import", open=False):
        with gr.Row():
            fmt = gr.Radio(list(EXPORT_FORMATS), value="jsonl", label="Export format (the filters above apply)")
            export_btn = gr.Button("Export", elem_id="annotations-export")
        export_file = gr.File(label="Download", interactive=False, elem_id="annotations-export-file")
        with gr.Row():
            upload = gr.File(label="Import an export (JSONL, CSV or Parquet)",
                             file_types=[".jsonl", ".csv", ".parquet"], type="filepath",
                             elem_id="annotations-import-file")
            import_btn = gr.Button("Import", elem_id="annotations-import")

    with gr.Accordion("Inter-annotator agreement (Krippendorff's alpha on ratings)", open=False):
        gr.Markdown("Items rated by two or more annotators; the filters above apply.")
        by_task = gr.Dataframe(interactive=False, label="Per task")
        by_model = gr.Dataframe(interactive=False, label="Per model")

    def choices(column: str, current: str) -> gr.Dropdown:
        values = [ALL, *store.distinct(column)]
        return gr.Dropdown(choices=values, value=current if current in values else ALL)

    def refresh_all(task_v, model_v, annotator_v, since_v, until_v, lo, hi):
        try:
            query = filters(task_v, model_v, annotator_v, since_v, until_v, lo, hi)
        except ValueError as e:
            return {status: status_html(f"Filters not applied: {e}", "error")}
        df = table_frame(store, **query)
        n = store.count(**query)
        tables = agreement_tables(store, **query)
        shown = f"showing the newest {len(df)}" if len(df) < n else "showing all"
        return {table: df, summary: status_html(f"{n} annotation(s) match ({shown}); {store.count()} in the store."),
                task: choices("task", task_v), model: choices("model_id", model_v),
                annotator_f: choices("annotator", annotator_v), by_task: tables["task"], by_model: tables["model"]}

    refresh_outputs = [table, summary, task, model, annotator_f, by_task, by_model, status]

    def select(df: pd.DataFrame, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        ann_id = str(df.iloc[row]["id"]) if df is not None and 0 <= row < len(df) else ""
        a = store.get(ann_id) if ann_id else None
        if a is None:
            return {selected: None, status: status_html("That annotation is gone: refresh the table.", "warn")}
        prov = {k: v for k, v in a.to_dict().items()
                if k not in ("input", "output", "rating", "corrected_output", "error_categories", "comment")}
        return {selected: a.id, sel_input: gr.Textbox(value=a.input, rtl=is_rtl(a.input)),
                sel_output: gr.Textbox(value=a.output, rtl=is_rtl(a.output)), provenance: prov,
                **f.fill(a.rating, a.corrected_output, a.error_categories, a.comment), f.annotator: a.annotator,
                status: status_html(f"Editing {a.id[:8]} by {a.annotator}.")}

    def save_changes(ann_id, rating, corrected, categories, comment, annotator):
        if not ann_id:
            return {status: status_html("Select a row of the table first.", "warn")}
        try:
            changes = judgement(rating, corrected, categories, comment, annotator)
            if not changes["annotator"]:
                raise ValueError("the annotator's name cannot be empty")
            store.update(ann_id, **changes)
        except KeyError:
            return {status: status_html("That annotation is gone: refresh the table.", "warn")}
        except ValueError as e:
            return {status: status_html(f"Not saved: {e}", "error")}
        return {status: status_html(f"Saved changes to {ann_id[:8]}.")}

    def delete_it(ann_id):
        if not ann_id:
            return {status: status_html("Select a row of the table first.", "warn")}
        gone = store.delete(ann_id)
        return {selected: None, status: status_html(f"Deleted {ann_id[:8]}." if gone else "It was already deleted.")}

    def export_it(fmt_v, *filter_values):
        try:
            path = export(store, fmt_v, *filter_values)
        except ValueError as e:
            return {status: status_html(f"Not exported: {e}", "error")}
        return {export_file: str(path), status: status_html(f"Exported to {path.name}.")}

    def import_it(path):
        if not path:
            return {status: status_html("Choose a file to import first.", "warn")}
        try:
            result = store.import_file(path)
        except ValueError as e:
            return {status: status_html(f"Nothing imported: {e}", "error")}
        return {status: status_html(f"Imported: {result.message}")}

    priv = {"api_visibility": "private"}
    refresh.click(refresh_all, filter_inputs, refresh_outputs, **priv)
    table.select(select, table, [selected, sel_input, sel_output, provenance, *f.judgement(), f.annotator, status],
                 **priv)
    update.click(save_changes, [selected, *f.components()], status, **priv).then(
        refresh_all, filter_inputs, refresh_outputs, **priv)
    delete.click(delete_it, selected, [selected, status], **priv).then(
        refresh_all, filter_inputs, refresh_outputs, **priv)
    export_btn.click(export_it, [fmt, *filter_inputs], [export_file, status], **priv)
    import_btn.click(import_it, upload, status, **priv).then(refresh_all, filter_inputs, refresh_outputs, **priv)
    root = Context.root_block
    if root is not None:
        root.load(refresh_all, filter_inputs, refresh_outputs, **priv)
