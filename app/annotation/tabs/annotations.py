"""The Annotations tab: every saved judgement in a filtered table; edit, delete, export, import, agreement.

Layout (`layout`), the handlers (plain functions of the store, the identity and the values, returning
{name: value}), then `wire`. Each message shows under the buttons that caused it: filters above the table, editing
under the editor, export and import in their section.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import Context
import pandas as pd

from ..agreement import agreement_frame
from ..api import EXPORT_FORMATS, export, filters, import_export_file, judgement
from ..rights import Identity, Refused, require_admin, require_owner_or_admin, visible_owner
from ...context import AppContext
from ...files import VisitorFiles
from ...settings import Settings
from ..spans import load_protocols
from ..store import AnnotationStore
from ...tasks import is_rtl
from . import compare_stats, span_editor
from .panel import JudgementFields, fields, judgement_values
from .span_editor import Frame, SpanEditor, span_js
from .wiring import PRIVATE, bind, under
from ...tabs.common import status_html

ALL = "(all)"
# What the table shows, by store column (the full record is in the editor and in exports).
TABLE_COLUMNS = {"id": "id", "created_at": "saved (UTC)", "task": "task", "model_id": "model",
                 "annotator": "annotator", "rating": "rating", "error_categories": "errors", "output": "output",
                 "corrected_output": "corrected", "comment": "comment"}
SHORT_ID = 8          # characters of the id shown (the editor and exports have all 32)
PREVIEW_CHARS = 80    # of each text: rows stay a few lines high, so ten or more fit in the table's height
# Narrow columns for short values so the texts get the room (the header words would otherwise wrap per letter).
COLUMN_WIDTHS = ["7%", "8%", "10%", "9%", "8%", "5%", "8%", "17%", "16%", "12%"]


BATCH_MARK = "<!-- batch"


def help_text(ctx: AppContext, part: str) -> str:
    """The Annotations ("annotations") or Batch ("batch") part of `assets/help/annotation.md`."""
    text = ctx.assets.help.get("annotation", "")
    before, _, after = text.partition(BATCH_MARK)
    return before.strip() if part == "annotations" else after.partition("-->")[2].strip()


@dataclass
class TableView:
    """The table as shown (`frame`: newest first, short ids, cut texts) and the full id of each shown id."""
    frame: pd.DataFrame
    ids: dict[str, str]


def model_name(model_id: str) -> str:
    """The checkpoint's last path part: "google/mt5-small" -> "mt5-small", a local folder's name, never its path."""
    return model_id.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or model_id


def minute(time: str) -> str:
    """Canonical UTC text to the minute: "2026-01-31T12:00:00.123456Z" -> "2026-01-31 12:00"."""
    return time[:16].replace("T", " ")


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS].rstrip() + "…"


def table_frame(store: AnnotationStore, **query: Any) -> TableView:
    """The table's rows, newest first, every cell text: short id, model name, time to the minute, texts cut."""
    df = store.query_frame(**query)[list(TABLE_COLUMNS)].iloc[::-1].reset_index(drop=True)
    ids = {i[:SHORT_ID]: i for i in df["id"]}
    df["id"] = df["id"].str[:SHORT_ID]
    df["created_at"] = df["created_at"].map(minute)
    df["model_id"] = df["model_id"].map(model_name)
    for col in ("output", "corrected_output", "comment"):
        df[col] = df[col].map(preview)
    df["rating"] = df["rating"].map(lambda r: "" if pd.isna(r) else str(int(r)))
    return TableView(df.rename(columns=TABLE_COLUMNS), ids)


HISTORY_COLUMNS = ["version", "action", "when (UTC)", "by", "rating", "errors", "corrected", "comment"]


def history_frame(store: AnnotationStore, ann_id: str) -> pd.DataFrame:
    """The annotation's earlier states, newest first: what it was before each edit, delete, restore or import."""
    rows = [[v.version, v.action, minute(v.replaced_at), v.replaced_by or "—", "" if v.record.rating is None
             else str(v.record.rating), ", ".join(v.record.error_categories), preview(v.record.corrected_output),
             preview(v.record.comment)] for v in reversed(store.history(ann_id))]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


DELETED_COLUMNS = ["id", "deleted (UTC)", "by", "task", "model", "annotator", "output"]


def deleted_frame(store: AnnotationStore, owner: str | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Deleted annotations (newest deletion first) and short id -> id, for the admin's restore list."""
    rows, ids = [], {}
    for a in store.query(deleted=True, **({} if owner is None else {"owner": owner})):
        when, by = store.deleted_info(a.id) or ("", "")
        ids[a.id[:SHORT_ID]] = a.id
        rows.append([a.id[:SHORT_ID], minute(when), by or "—", a.task, model_name(a.model_id), a.annotator,
                     preview(a.output)])
    rows.sort(key=lambda r: r[1], reverse=True)
    return pd.DataFrame(rows, columns=DELETED_COLUMNS), ids


def agreement_tables(store: AnnotationStore, **query: Any) -> dict[str, pd.DataFrame]:
    records = store.query(**query)
    return {"task": agreement_frame(records, by="task"), "model": agreement_frame(records, by="model_id")}


EDIT_TITLES = {"output": "Output: select a stretch to mark an error",
               "input": "Input: select what the output leaves out"}
FILTERS = ("task", "model", "annotator", "since", "until", "min_rating", "max_rating")


def edit_frame() -> Frame:
    """The frame of the editor's span editor."""
    return Frame("annotations-edit", EDIT_TITLES, load_protocols(), with_esa=True)


@dataclass
class AnnotationsTab:
    """The tab's components, by section: filters and table, the editor, deleted ones, export and import,
    agreement, and the comparisons' section."""
    task: gr.Dropdown
    model: gr.Dropdown
    annotator: gr.Dropdown
    since: gr.Textbox
    until: gr.Textbox
    min_rating: gr.Slider
    max_rating: gr.Slider
    refresh: gr.Button
    summary: gr.HTML                  # the count, or why the filters were not applied
    shown_ids: gr.State               # short id shown -> full id
    table: gr.Dataframe
    selected: gr.State
    armed: gr.State                   # the id "Delete" was pressed for once: a second press deletes it
    deleted: gr.State                 # the id of the last record deleted: Undo restores it
    sel_input: gr.Textbox
    sel_output: gr.Textbox
    provenance: gr.JSON
    fields: JudgementFields           # the record's own annotator (not the name remembered for new annotations)
    editor: SpanEditor                # its error spans, highlighted and editable (ESA / MQM)
    update: gr.Button
    delete: gr.Button
    undo: gr.Button
    status: gr.HTML
    history: gr.Dataframe
    deleted_ids: gr.State
    to_restore: gr.State
    deleted_table: gr.Dataframe
    restore: gr.Button
    restore_status: gr.HTML
    fmt: gr.Radio
    export: gr.Button
    export_file: gr.File
    upload: gr.File
    import_: gr.Button
    io_status: gr.HTML
    by_task: gr.Dataframe
    by_model: gr.Dataframe
    compare: compare_stats.CompareStats

    def filters(self) -> list:
        return [getattr(self, name) for name in FILTERS]

    def refresh_outputs(self) -> list:
        return [self.table, self.shown_ids, self.summary, self.task, self.model, self.annotator, self.by_task,
                self.by_model, self.deleted_table, self.deleted_ids]


# ---------------------------------------------------------------------------------------------------------------
# The handlers


def choices(store: AnnotationStore, column: str, current: str, owner: str | None = None) -> gr.Dropdown:
    values = [ALL, *store.distinct(column, owner=owner)]
    return gr.Dropdown(choices=values, value=current if current in values else ALL)


def refresh_all(store: AnnotationStore, ident: Identity, task_v, model_v, annotator_v, since_v, until_v, lo,
                hi) -> dict:
    """The table, the filters' choices, agreement and the deleted list, as `ident` may see them."""
    try:
        # a signed-in annotator sees their own annotations; admins (and open use) everyone's
        owner = visible_owner(ident)
        query = filters(task_v, model_v, annotator_v, since_v, until_v, lo, hi)
    except Refused as e:
        empty = pd.DataFrame(columns=list(TABLE_COLUMNS.values()))
        return {"table": empty, "shown_ids": {}, "summary": status_html(str(e), "warn"),
                "deleted_table": pd.DataFrame(columns=DELETED_COLUMNS), "deleted_ids": {}}
    except ValueError as e:
        return {"summary": status_html(f"Filters not applied: {e}", "error")}
    mine = {} if owner is None else {"owner": owner}
    view = table_frame(store, **query, **mine)
    n = store.count(**query, **mine)
    tables = agreement_tables(store, **query)   # figures only: no names or texts of others
    gone, gone_ids = deleted_frame(store, owner)
    whose = "" if owner is None else " of yours"
    return {"table": view.frame, "shown_ids": view.ids, "deleted_table": gone, "deleted_ids": gone_ids,
            "summary": status_html(f"{n} annotation(s){whose} match; {store.count(**mine)}{whose} in the store."),
            "task": choices(store, "task", task_v, owner), "model": choices(store, "model_id", model_v, owner),
            "annotator": choices(store, "annotator", annotator_v, owner), "by_task": tables["task"],
            "by_model": tables["model"]}


def disarmed() -> dict:
    """Updates that put "Delete" back to a first press (made in the handler: in the layout it would add one)."""
    return {"armed": None, "delete": gr.Button("Delete")}


def select(store: AnnotationStore, ident: Identity, ids: dict[str, str], row: list | None, *,
           frame: Frame | None = None) -> dict:
    """A row of the table selected (`row`: its values, right even when the table was sorted in the page)."""
    short = str(row[0]) if row else ""
    a = store.get(ids.get(short, "")) if short else None
    if a is not None and not ident.sees_all and a.owner != ident.user:
        a = None    # not theirs: as if it were not there
    if a is None:
        return {"selected": None, **disarmed(), "status": status_html("That annotation is gone: refresh the table.",
                                                                      "warn")}
    prov = {k: v for k, v in a.to_dict().items()
            if k not in ("input", "output", "rating", "corrected_output", "error_categories", "comment")}
    return {"selected": a.id, "sel_input": gr.Textbox(value=a.input, rtl=is_rtl(a.input)),
            "sel_output": gr.Textbox(value=a.output, rtl=is_rtl(a.output)), "provenance": prov,
            **under("fields", judgement_values(a.rating, a.corrected_output, a.error_categories, a.comment)),
            "fields.annotator": gr.Textbox(value=a.annotator, interactive=not ident.protected),
            "history": history_frame(store, a.id),
            **under("editor", span_editor.load(frame or edit_frame(), {"output": a.output, "input": a.input}, a.task,
                                               a.spans, a.protocol or "none", a.esa_score)),
            **disarmed(), "status": status_html(f"Editing {a.id[:SHORT_ID]} by {a.annotator}.")}


def save_changes(store: AnnotationStore, ident: Identity, ann_id, rating, corrected, categories, comment, annotator,
                 protocol_v=None, spans_v=None, esa_v=None) -> dict:
    if not ann_id:
        return {"status": status_html("Select a row of the table first.", "warn")}
    try:
        current = store.get(ann_id)
        if current is None:
            raise KeyError(ann_id)
        require_owner_or_admin(ident, current.owner, "change")
        changes = judgement(rating, corrected, categories, comment, annotator, protocol=protocol_v,
                            spans=spans_v, esa_score=esa_v if protocol_v == "esa" else None)
        if ident.protected:
            changes["annotator"] = current.annotator   # the judgement stays its annotator's
        if not changes["annotator"]:
            raise ValueError("the annotator's name cannot be empty")
        store.update(ann_id, by=ident.user, **changes)
    except KeyError:
        return {"status": status_html("That annotation is gone: refresh the table.", "warn")}
    except ValueError as e:
        return {"status": status_html(f"Not saved: {e}", "error")}
    # a save ends the chance to undo the last delete
    return {"deleted": None, "undo": gr.Button(visible=False), **disarmed(), "history": history_frame(store, ann_id),
            "status": status_html(f"Saved changes to {ann_id[:SHORT_ID]} (the version before is kept).")}


def delete_it(store: AnnotationStore, ident: Identity, ann_id, armed_id) -> dict:
    """First press: asks for confirmation. Second press (same row): deletes, keeping the record for Undo."""
    if not ann_id:
        return {**disarmed(), "status": status_html("Select a row of the table first.", "warn")}
    if armed_id != ann_id:
        return {"armed": ann_id, "delete": gr.Button("Confirm delete?"),
                "status": status_html(f"Delete {ann_id[:SHORT_ID]}? Press \"Confirm delete?\" to delete it (Undo "
                                      "puts it back until the next save), or select another row.", "warn")}
    record = store.get(ann_id)
    try:
        if record is not None:
            require_owner_or_admin(ident, record.owner, "delete")
    except Refused as e:
        return {**disarmed(), "status": status_html(f"Not deleted: {e}", "error")}
    if record is None or not store.delete(ann_id, by=ident.user):
        return {"selected": None, **disarmed(), "status": status_html("It was already deleted.", "warn")}
    return {"selected": None, **disarmed(), "deleted": record.id, "undo": gr.Button(visible=True),
            "status": status_html(f"Deleted {ann_id[:SHORT_ID]}. \"Undo delete\" puts it back (until the next "
                                  "save); an admin can restore it later too.")}


def may_restore(store: AnnotationStore, ident: Identity, ann_id: str) -> None:
    """Admins restore anything; an annotator undoes their own delete of their own annotation."""
    a = store.get(ann_id, include_deleted=True)
    info = store.deleted_info(ann_id)
    own_undo = a is not None and info is not None and a.owner == ident.user and info[1] == ident.user
    if not own_undo:
        require_admin(ident, "Restoring a deleted annotation")


def undo_it(store: AnnotationStore, ident: Identity, ann_id) -> dict:
    if not ann_id:
        return {"undo": gr.Button(visible=False), "status": status_html("Nothing to undo.", "warn")}
    try:
        may_restore(store, ident, ann_id)
        store.restore(ann_id, by=ident.user)
    except (KeyError, ValueError) as e:
        return {"status": status_html(f"Not restored: {e}", "error")}
    return {"deleted": None, "undo": gr.Button(visible=False),
            "status": status_html(f"Restored {ann_id[:SHORT_ID]}.")}


def pick_deleted(store: AnnotationStore, ident: Identity, ids: dict[str, str], row: list | None) -> dict:
    short = str(row[0]) if row else ""
    return {"to_restore": ids.get(short), "restore_status": status_html(
        f"Selected {short}: press \"Restore the selected one\"." if short in ids else "Refresh the list.")}


def restore_it(store: AnnotationStore, ident: Identity, ann_id) -> dict:
    if not ann_id:
        return {"restore_status": status_html("Select a deleted annotation first.", "warn")}
    try:
        may_restore(store, ident, ann_id)
        store.restore(ann_id, by=ident.user)
    except (KeyError, ValueError) as e:
        return {"restore_status": status_html(f"Not restored: {e}", "error")}
    return {"to_restore": None, "restore_status": status_html(f"Restored {ann_id[:SHORT_ID]}: it is back in the "
                                                              "table.")}


def export_it(store: AnnotationStore, ident: Identity, fmt_v, task_v, model_v, annotator_v, since_v, until_v, lo, hi,
              *, files: VisitorFiles | None = None) -> dict:
    try:
        path = export(store, fmt_v, task_v, model_v, annotator_v, since_v, until_v, lo, hi, ident=ident, files=files)
    except ValueError as e:
        return {"io_status": status_html(f"Not exported: {e}", "error")}
    return {"export_file": str(path), "io_status": status_html(f"Exported to {path.name}.")}


def import_it(store: AnnotationStore, ident: Identity, path) -> dict:
    if not path:
        return {"io_status": status_html("Choose a file to import first.", "warn")}
    try:
        result = import_export_file(store, path, ident)
    except ValueError as e:
        return {"io_status": status_html(f"Nothing imported: {e}", "error")}
    return {"io_status": status_html(result["message"])}


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring


def build(ctx: AppContext, store: AnnotationStore) -> None:
    """Lays out the tab (call inside a `gr.Tab`) and wires its events."""
    tab = layout(ctx)
    wire(tab, store, ctx.settings, span_js(ctx, "span_select"))


def layout(ctx: AppContext) -> AnnotationsTab:
    gr.Markdown(help_text(ctx, "annotations"), elem_classes=["tab-help"])
    parts = filters_section()
    parts["summary"] = gr.HTML(elem_id="annotations-summary")
    parts["shown_ids"] = gr.State({})
    parts["table"] = gr.Dataframe(pd.DataFrame(columns=list(TABLE_COLUMNS.values())), interactive=False, wrap=True,
                                  max_height=900, column_widths=COLUMN_WIDTHS, datatype="str",
                                  label="Annotations, newest first (select a row to edit it)",
                                  elem_id="annotations-table")
    parts |= editor_section(ctx)
    parts |= deleted_section()
    parts |= exchange_section()
    with gr.Accordion("Inter-annotator agreement (Krippendorff's alpha on ratings)", open=False):
        gr.Markdown("Items rated by two or more annotators; the filters above apply.")
        parts["by_task"] = gr.Dataframe(interactive=False, label="Per task")
        parts["by_model"] = gr.Dataframe(interactive=False, label="Per model")
    parts["compare"] = compare_stats.layout()   # win rates, agreement on preferences, export
    return AnnotationsTab(**parts)


def filters_section() -> dict:
    with gr.Accordion("Filters", open=True):
        with gr.Row():
            task = gr.Dropdown([ALL], value=ALL, label="Task", elem_id="annotations-task")
            model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="annotations-model")
            annotator = gr.Dropdown([ALL], value=ALL, label="Annotator", elem_id="annotations-annotator")
        with gr.Row():
            since = gr.Textbox(label="From (YYYY-MM-DD, UTC)", max_length=40, elem_id="annotations-since")
            until = gr.Textbox(label="Until (YYYY-MM-DD, inclusive)", max_length=40, elem_id="annotations-until")
            min_rating = gr.Slider(1, 5, value=1, step=1, label="Lowest rating")
            max_rating = gr.Slider(1, 5, value=5, step=1, label="Highest rating",
                                   info="1–5 shows unrated annotations too")
        refresh = gr.Button("Apply filters / refresh", elem_id="annotations-refresh")
    return {"task": task, "model": model, "annotator": annotator, "since": since, "until": until,
            "min_rating": min_rating, "max_rating": max_rating, "refresh": refresh}


def editor_section(ctx: AppContext) -> dict:
    with gr.Accordion("Edit the selected annotation", open=True):
        out = {"selected": gr.State(None), "armed": gr.State(None), "deleted": gr.State(None)}
        with gr.Row():
            out["sel_input"] = gr.Textbox(label="Input", lines=3, interactive=False)
            out["sel_output"] = gr.Textbox(label="Model output", lines=3, interactive=False)
        out["provenance"] = gr.JSON(label="Provenance", open=False)
        out["fields"] = fields("annotations-edit")
        out["editor"] = span_editor.layout(ctx, edit_frame())
        with gr.Row():
            out["update"] = gr.Button("Save changes", variant="primary", elem_id="annotations-update")
            out["delete"] = gr.Button("Delete", variant="stop", elem_id="annotations-delete")
            out["undo"] = gr.Button("Undo delete", visible=False, elem_id="annotations-undo")
        out["status"] = gr.HTML(elem_id="annotations-status")
        out["history"] = gr.Dataframe(
            pd.DataFrame(columns=HISTORY_COLUMNS), interactive=False, wrap=True, datatype="str",
            label="Earlier versions of the selected annotation (every edit keeps the one before)",
            elem_id="annotations-history")
    return out


def deleted_section() -> dict:
    with gr.Accordion("Deleted annotations (admins restore them)", open=False):
        return {"deleted_ids": gr.State({}), "to_restore": gr.State(None),
                "deleted_table": gr.Dataframe(pd.DataFrame(columns=DELETED_COLUMNS), interactive=False, wrap=True,
                                              datatype="str", label="Deleted, newest first (select one to restore it)",
                                              elem_id="annotations-deleted"),
                "restore": gr.Button("Restore the selected one", elem_id="annotations-restore"),
                "restore_status": gr.HTML(elem_id="annotations-restore-status")}


def exchange_section() -> dict:
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
        io_status = gr.HTML(elem_id="annotations-io-status")
    return {"fmt": fmt, "export": export_btn, "export_file": export_file, "upload": upload, "import_": import_btn,
            "io_status": io_status}


def wire(tab: AnnotationsTab, store: AnnotationStore, settings: Settings, select_js: str) -> None:
    def on(handler, **kw):
        return bind(functools.partial(handler, **kw), tab, store, settings,
                    event="row_value" if handler in (select, pick_deleted) else "")

    span_editor.wire(tab.editor, store, settings, select_js)
    compare_stats.wire(tab.compare, store, settings)
    filters_in, refresh_out, f, ed = tab.filters(), tab.refresh_outputs(), tab.fields, tab.editor
    refresh = on(refresh_all)
    tab.refresh.click(refresh, filters_in, refresh_out, **PRIVATE)
    tab.refresh.click(compare_stats.bind_refresh(tab.compare, store, settings), None, tab.compare.outputs(),
                      **PRIVATE)
    tab.table.select(on(select, frame=ed.frame), tab.shown_ids,
                     [tab.selected, tab.sel_input, tab.sel_output, tab.provenance, *f.judgement(), f.annotator,
                      tab.armed, tab.delete, tab.history, tab.status, *ed.load_outputs()], **PRIVATE)
    tab.update.click(on(save_changes), [tab.selected, *f.components(), ed.protocol, ed.spans, ed.esa_score],
                     [tab.deleted, tab.undo, tab.armed, tab.delete, tab.history, tab.status],
                     **PRIVATE).then(refresh, filters_in, refresh_out, **PRIVATE)
    tab.delete.click(on(delete_it), [tab.selected, tab.armed],
                     [tab.selected, tab.armed, tab.deleted, tab.delete, tab.undo, tab.status], **PRIVATE).then(
        refresh, filters_in, refresh_out, **PRIVATE)
    tab.undo.click(on(undo_it), tab.deleted, [tab.deleted, tab.undo, tab.status], **PRIVATE).then(
        refresh, filters_in, refresh_out, **PRIVATE)
    tab.deleted_table.select(on(pick_deleted), tab.deleted_ids, [tab.to_restore, tab.restore_status], **PRIVATE)
    tab.restore.click(on(restore_it), tab.to_restore, [tab.to_restore, tab.restore_status], **PRIVATE).then(
        refresh, filters_in, refresh_out, **PRIVATE)
    tab.export.click(on(export_it, files=settings.files), [tab.fmt, *filters_in], [tab.export_file, tab.io_status],
                     **PRIVATE)
    tab.import_.click(on(import_it), tab.upload, tab.io_status, **PRIVATE).then(refresh, filters_in, refresh_out,
                                                                               **PRIVATE)
    root = Context.root_block
    if root is not None:
        root.load(refresh, filters_in, refresh_out, **PRIVATE)
        root.load(compare_stats.bind_refresh(tab.compare, store, settings), None, tab.compare.outputs(), **PRIVATE)
