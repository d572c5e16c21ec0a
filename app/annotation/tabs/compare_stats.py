"""The Annotations tab's section on side-by-side comparisons: win rates per system pair with 95% Wilson intervals,
the agreement between annotators on preferences (Krippendorff's alpha, nominal), the comparisons themselves
(delete: the owner or an admin), and their export and import.

Layout (`layout`), the handlers (plain functions of the store, the identity and the values, returning
{name: value}), then `wire`; the Annotations tab runs `compare_refresh` with its own refresh."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ..agreement import preference_agreement, system_label, win_rate_frame
from ..comparisons import (PREFERENCE_LABELS, comparison_owner, delete_comparison, export_comparisons,
                           import_comparisons, query_comparisons, restore_comparison)
from ..rights import Identity, require_admin, require_owner_or_admin, visible_owner
from ..store import AnnotationStore
from ...files import VisitorFiles
from ...tabs.common import status_html
from .wiring import PRIVATE, bind

EXPLAINED = (
    "Per pair of systems (X and Y in a fixed order): **X's win rate over the decisive judgements** (X better or Y "
    "better), with its **95% Wilson score interval**. Ties and *both bad* are counted separately, not as half a "
    "win, so a pair judged mostly *both bad* does not look like an even match. Every judgement counts, also "
    "several annotators' judgements of one item. **Agreement**: Krippendorff's alpha (nominal: X better, Y "
    "better, tie, both bad) over items judged by two or more annotators, in terms of the systems, whatever "
    "order each annotator saw them in.")
LIST_COLUMNS = ["id", "saved (UTC)", "task", "A", "B", "preference", "spans", "annotator"]
FORMATS = ("jsonl", "csv", "parquet")


@dataclass
class CompareStats:
    """The section's components."""
    agreement: gr.HTML
    table: gr.Dataframe
    listing: gr.Dataframe
    delete: gr.Button
    fmt: gr.Radio
    export: gr.Button
    export_file: gr.File
    upload: gr.File
    import_: gr.Button
    status: gr.HTML
    deleted_list: gr.Dataframe
    restore: gr.Button
    picked: gr.State            # the full id of the row selected
    picked_deleted: gr.State
    deleted_ids: gr.State
    armed: gr.State             # the id "Delete" was pressed for once: a second press deletes it
    ids: gr.State               # short id shown -> full id

    def outputs(self) -> list:
        """What `refresh` updates."""
        return [self.table, self.agreement, self.listing, self.ids, self.deleted_list, self.deleted_ids]


def listing_frame(records: list) -> pd.DataFrame:
    """The comparisons, newest first, as the section lists them (short ids, systems by what sets them apart)."""
    rows = [[c.id[:8], c.created_at[:16].replace("T", " "), c.task, system_label(c.system_a, c.system_b),
             system_label(c.system_b, c.system_a), PREFERENCE_LABELS[c.preference], str(len(c.spans)), c.annotator]
            for c in reversed(records)]
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


def visible(store: AnnotationStore, ident: Identity) -> list:
    """The comparisons `ident` may see: all (admins, open use) or their own."""
    owner = visible_owner(ident)
    return [c for c in query_comparisons(store) if owner is None or c.owner == owner]


# ---------------------------------------------------------------------------------------------------------------
# The handlers


def compare_refresh(store: AnnotationStore, ident: Identity) -> dict:
    try:
        records = visible(store, ident)
    except ValueError as e:
        return {"agreement": status_html(f"{e}", "warn")}
    a = preference_agreement(records)
    line = f"Agreement on preferences: {a.note}." if a.alpha_nominal is None else (
        f"Agreement on preferences: Krippendorff's alpha (nominal) = {a.alpha_nominal:.3f} over {a.items} "
        f"item(s) judged by 2+ annotators ({a.annotators} annotators, {a.judgements} judgements).")
    gone = [c for c in query_comparisons(store, deleted=True) if ident.sees_all or c.owner == ident.user]
    return {"table": win_rate_frame(records), "listing": listing_frame(records),
            "ids": {c.id[:8]: c.id for c in records},
            "agreement": status_html(f"{len(records)} comparison(s) stored. {line}"),
            "deleted_list": listing_frame(gone), "deleted_ids": {c.id[:8]: c.id for c in gone}}


def compare_pick_deleted(store: AnnotationStore, ident: Identity, shown_ids, row) -> dict:
    short = str(row[0]) if row else ""
    return {"picked_deleted": shown_ids.get(short),
            "status": status_html(f"Deleted comparison {short} selected: press Restore.") if short else ""}


def compare_restore(store: AnnotationStore, ident: Identity, cmp_id) -> dict:
    if not cmp_id:
        return {"status": status_html("Select a deleted comparison first.", "warn")}
    try:
        require_admin(ident, "Restoring a deleted comparison")
    except ValueError as e:
        return {"status": status_html(f"Not restored: {e}", "error")}
    if not restore_comparison(store, cmp_id, by=ident.user):
        return {"status": status_html("It is not deleted any more: refresh.", "warn")}
    return {"picked_deleted": None, "status": status_html(f"Restored comparison {cmp_id[:8]}.")}


def compare_pick(store: AnnotationStore, ident: Identity, shown_ids, row) -> dict:
    short = str(row[0]) if row else ""
    return {"picked": shown_ids.get(short), "armed": None, "delete": gr.Button("Delete the selected comparison"),
            "status": status_html(f"Comparison {short} selected.") if short else ""}


def compare_delete(store: AnnotationStore, ident: Identity, cmp_id, armed_id) -> dict:
    """First press: asks for confirmation. Second press (same comparison): deletes it (kept, marked deleted)."""
    if not cmp_id:
        return {"status": status_html("Select a comparison in the list first.", "warn")}
    owner = comparison_owner(store, cmp_id)
    try:
        if owner is None:
            raise KeyError(cmp_id)
        require_owner_or_admin(ident, owner, "delete")
    except KeyError:
        return {"status": status_html("That comparison is gone: refresh.", "warn")}
    except ValueError as e:
        return {"status": status_html(f"Not deleted: {e}", "error")}
    if armed_id != cmp_id:
        return {"armed": cmp_id, "delete": gr.Button("Confirm delete?"),
                "status": status_html(f"Delete comparison {cmp_id[:8]}? Press \"Confirm delete?\".", "warn")}
    delete_comparison(store, cmp_id, by=ident.user)
    return {"armed": None, "picked": None, "delete": gr.Button("Delete the selected comparison"),
            "status": status_html(f"Deleted comparison {cmp_id[:8]} (kept, marked deleted: an admin can restore it "
                                  "from the list of deleted comparisons below).")}


def compare_export(store: AnnotationStore, ident: Identity, fmt_v, *, files: VisitorFiles) -> dict:
    try:   # a refusal (rights) and a full files folder (FilesFull is a ValueError) read the same way
        records = visible(store, ident)
        path = files.write(lambda folder: export_comparisons(records, folder / f"comparisons.{fmt_v}"))
    except ValueError as e:
        return {"status": status_html(f"Not exported: {e}", "error")}
    return {"export_file": str(path), "status": status_html(f"Exported {len(records)} comparison(s).")}


def compare_import(store: AnnotationStore, ident: Identity, path) -> dict:
    if not path:
        return {"status": status_html("Choose a file to import first.", "warn")}
    try:
        require_admin(ident, "Importing comparisons")
        result = import_comparisons(store, path, by=ident.user)
    except ValueError as e:
        return {"status": status_html(f"Nothing imported: {e}", "error")}
    return {"status": status_html(f"Imported: {result.message}.")}


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring


def build(store: AnnotationStore, settings: Any) -> CompareStats:
    """Lays out the section and wires its own buttons; the tab runs `bind_refresh(...)` with its refresh."""
    section = layout()
    wire(section, store, settings)
    return section


def layout() -> CompareStats:
    """The section, an accordion."""
    with gr.Accordion("Side-by-side comparisons: win rates, agreement on preferences, export and import", open=False,
                      elem_id="annotations-compare"):
        gr.Markdown(EXPLAINED)
        agreement = gr.HTML(elem_id="annotations-compare-agreement")
        # the systems' names get the room; the counts' headers keep their words whole (style.css)
        table = gr.Dataframe(pd.DataFrame(), interactive=False, wrap=True, label="Win rates per system pair",
                             column_widths=["10%", "20%", "20%", "8%", "6%", "6%", "5%", "6%", "9%", "10%"],
                             elem_id="annotations-win-rates")
        listing = gr.Dataframe(pd.DataFrame(columns=LIST_COLUMNS), interactive=False, wrap=True, datatype="str",
                               max_height=400, label="Comparisons, newest first (select one to delete it)",
                               elem_id="annotations-comparisons")
        with gr.Row():
            delete_btn = gr.Button("Delete the selected comparison", variant="stop",
                                   elem_id="annotations-compare-delete")
            fmt = gr.Radio(list(FORMATS), value="jsonl", label="Export format")
            export_btn = gr.Button("Export comparisons", elem_id="annotations-compare-export")
        export_file = gr.File(label="Download", interactive=False, elem_id="annotations-compare-export-file")
        with gr.Row():
            upload = gr.File(label="Import a comparison export (JSONL, CSV or Parquet)", type="filepath",
                             file_types=[".jsonl", ".csv", ".parquet"], elem_id="annotations-compare-import-file")
            import_btn = gr.Button("Import comparisons", elem_id="annotations-compare-import")
        status = gr.HTML(elem_id="annotations-compare-status")
        deleted_list = gr.Dataframe(pd.DataFrame(columns=LIST_COLUMNS), interactive=False, wrap=True,
                                    datatype="str", max_height=300, elem_id="annotations-compare-deleted",
                                    label="Deleted comparisons (admins: select one to restore it)")
        restore_btn = gr.Button("Restore the selected deleted comparison", elem_id="annotations-compare-restore")
    return CompareStats(agreement, table, listing, delete_btn, fmt, export_btn, export_file, upload, import_btn,
                        status, deleted_list, restore_btn, gr.State(None), gr.State(None), gr.State({}),
                        gr.State(None), gr.State({}))


def bind_refresh(section: CompareStats, store: AnnotationStore, settings: Any) -> Callable[..., dict]:
    """The refresh as a Gradio callback (outputs: `section.outputs()`), for the tab's own refresh and load."""
    return bind(compare_refresh, section, store, settings)


def wire(section: CompareStats, store: AnnotationStore, settings: Any) -> None:
    def on(handler, **kw):
        return bind(functools.partial(handler, **kw), section, store, settings,
                    event="row_value" if handler in (compare_pick, compare_pick_deleted) else "")

    s, again = section, bind_refresh(section, store, settings)
    s.listing.select(on(compare_pick), s.ids, [s.picked, s.armed, s.delete, s.status], **PRIVATE)
    s.deleted_list.select(on(compare_pick_deleted), s.deleted_ids, [s.picked_deleted, s.status], **PRIVATE)
    s.restore.click(on(compare_restore), s.picked_deleted, [s.picked_deleted, s.status], **PRIVATE).then(
        again, None, s.outputs(), **PRIVATE)
    s.delete.click(on(compare_delete), [s.picked, s.armed], [s.armed, s.picked, s.delete, s.status], **PRIVATE).then(
        again, None, s.outputs(), **PRIVATE)
    s.export.click(on(compare_export, files=settings.files), s.fmt, [s.export_file, s.status], **PRIVATE)
    s.import_.click(on(compare_import), s.upload, s.status, **PRIVATE).then(again, None, s.outputs(), **PRIVATE)
