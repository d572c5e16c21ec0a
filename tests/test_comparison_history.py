"""Comparisons keep their history and their deletions as annotations do (issue 21): every edit, delete, restore and
import over a record first keeps the state before it (who, when, which action), and an import never brings back a
comparison deleted here. On SQLite and PostgreSQL (the `databases` fixture), then through the real app: an admin
imports a newer copy of a deleted comparison over /import_comparisons and the app's SQLite file keeps it deleted."""
import dataclasses
import json
import sqlite3

import pytest

from app.annotation.comparisons import (ComparisonImport, comparison_history, compare_rows, comparison_for_row,
                                        create_compare_job, delete_comparison, export_comparisons, get_comparison,
                                        import_comparisons, judge_row, restore_comparison, run_compare_job,
                                        save_comparison, to_flat, update_comparison)
from app.annotation.batch import BatchInput
from app.annotation.store import AnnotationStore, ImportResult
from test_annotation_compare import make

LATER = "2999-01-01T00:00:00.000000Z"


@pytest.fixture
def store(databases):
    with AnnotationStore(databases("history.db")) as s:
        yield s


def newer_copy(c, path, **changes):
    """`c` exported to `path` (JSONL) as edited elsewhere later."""
    return export_comparisons([dataclasses.replace(c, updated_at=LATER, **changes)], path)


def test_edit_delete_and_restore_keep_every_earlier_state(store):
    cmp_id = save_comparison(store, make(annotator="alice"), owner="alice")
    first = get_comparison(store, cmp_id)
    edited = update_comparison(store, cmp_id, by="alice", preference="tie", comment="on second thought")
    assert delete_comparison(store, cmp_id, by="root") is True
    assert delete_comparison(store, cmp_id, by="root") is False        # nothing live: no version either
    assert restore_comparison(store, cmp_id, by="root") is True
    assert restore_comparison(store, cmp_id, by="root") is False       # not deleted: no version either
    history = comparison_history(store, cmp_id)
    assert [(v.version, v.action, v.replaced_by) for v in history] == [
        (1, "edit", "alice"), (2, "delete", "root"), (3, "restore", "root")]
    assert to_flat(history[0].record) == to_flat(first)                 # the state before the edit, every field
    assert [v.record.preference for v in history] == ["B", "tie", "tie"]
    assert to_flat(history[1].record) == to_flat(edited) == to_flat(get_comparison(store, cmp_id))
    assert all(v.replaced_at.endswith("Z") for v in history) and history[0].replaced_at <= history[2].replaced_at
    assert comparison_history(store, "no-such-id") == []


def test_an_import_over_a_record_keeps_its_history_and_its_job_link(store, tmp_path):
    job = create_compare_job(store, [BatchInput(text=make().input)], task="summarization",
                             systems=[{"model_id": "m1"}, {"model_id": "m2"}])
    run_compare_job(store, job.id, lambda n, row: f"output of system {n}")
    row = compare_rows(store, job.id)[0]
    cmp_id = judge_row(store, job.id, 0, comparison_for_row(job, row, preference="A", annotator="alice",
                                                            protocol="esa"), owner="alice")
    stored = get_comparison(store, cmp_id)
    result = import_comparisons(store, newer_copy(stored, tmp_path / "newer.jsonl", comment="from elsewhere"),
                                by="root")
    assert isinstance(result, ImportResult) and (result.added, result.updated, result.skipped, result.deleted) == \
        (0, 1, 0, 0)
    assert get_comparison(store, cmp_id).comment == "from elsewhere"
    assert [(v.action, v.replaced_by, v.record.comment) for v in comparison_history(store, cmp_id)] == [
        ("import", "root", "")]
    assert compare_rows(store, job.id)[0].comparison_id == cmp_id        # replaced in place: still linked
    again = import_comparisons(store, tmp_path / "newer.jsonl", by="root")
    assert (again.updated, again.skipped) == (0, 1) and len(comparison_history(store, cmp_id)) == 1


def test_an_import_never_brings_back_a_deleted_comparison(store, tmp_path):
    cmp_id = save_comparison(store, make(annotator="alice"), owner="alice")
    kept = save_comparison(store, make(annotator="bob", preference="A"), owner="bob")
    path = export_comparisons([dataclasses.replace(get_comparison(store, i), updated_at=LATER, comment="revived?")
                               for i in (cmp_id, kept)], tmp_path / "newer.jsonl")
    delete_comparison(store, cmp_id, by="alice")
    deleted_row = store.read("SELECT deleted_at, deleted_by, comment FROM comparisons WHERE id=?", (cmp_id,))[0]
    result = import_comparisons(store, path, by="root")
    assert isinstance(result, ComparisonImport)
    assert (result.added, result.updated, result.skipped, result.deleted) == (0, 1, 1, 1)
    assert "skipped 0 already present and 1 deleted here" in result.message, result.message
    assert get_comparison(store, cmp_id) is None                        # still deleted, by whom and when as before
    assert tuple(store.read("SELECT deleted_at, deleted_by, comment FROM comparisons WHERE id=?", (cmp_id,))[0]) == \
        tuple(deleted_row)
    assert [(v.action, v.replaced_by) for v in comparison_history(store, cmp_id)] == [("delete", "alice")]
    assert get_comparison(store, kept).comment == "revived?"             # the live one is updated
    # restored by an admin, the same file then updates it
    assert restore_comparison(store, cmp_id, by="root")
    assert import_comparisons(store, path, by="root").updated == 1
    assert get_comparison(store, cmp_id).comment == "revived?"
    assert [(v.action, v.replaced_by) for v in comparison_history(store, cmp_id)] == [
        ("delete", "alice"), ("restore", "root"), ("import", "root")]


def test_the_import_result_reads_as_before_without_deletions():
    plain = ComparisonImport(2, 1, 3)
    assert (plain.added, plain.updated, plain.skipped, plain.deleted) == (2, 1, 3, 0)
    assert plain.message == ImportResult(2, 1, 3).message


# ---------------------------------------------------------------------------------------------------------------
# The real app: an admin's import over /import_comparisons, the app's SQLite file read directly


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory):
    import apphost
    root = tmp_path_factory.mktemp("comparison-history")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "a.db"),
           "MT5_STUDIO_USERS": "root:root-pw,alice:alice-pw", "MT5_STUDIO_ADMINS": "root"}
    srv = apphost.start(root / "server.log", env=env)
    yield srv, root / "a.db"
    srv.stop()


def db_state(db, cmp_id):
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT deleted_at, deleted_by, comment, preference FROM comparisons WHERE id=?",
                           (cmp_id,)).fetchone()
        versions = conn.execute("SELECT version, action, replaced_by, record FROM comparison_versions WHERE "
                                "comparison_id=? ORDER BY version", (cmp_id,)).fetchall()
    return row, [(v, a, by, json.loads(record)["comment"]) for v, a, by, record in versions]


def select(page, refresh: str, pick: str, cmp_id: str) -> None:
    """Lists the comparisons in `page`'s session, then selects the row of `cmp_id` (what a click sends: the events'
    inputs are the session's State, which a client cannot set)."""
    page.text(refresh, [])
    short = cmp_id[:8]
    assert "selected" in page.text(pick, [None], event_data={"index": [0, 0], "value": short, "row_value": [short]})


def test_an_admin_import_through_the_app_keeps_a_deleted_comparison_deleted(admin_app, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from rawcall import RawSession

    srv, db = admin_app
    alice = gradio_client.Client(srv.url, auth=("alice", "alice-pw"), verbose=False)
    saved = alice.predict(task="summarization", input_text="نص طويل عن المشروع", model_a="demo/generation",
                          output_a="نص", model_b="demo/generation", output_b="المشروع", preference="A",
                          annotator="x", decoding_a='{"num_beams": 1}', decoding_b='{"num_beams": 4}',
                          comment="mine", api_name="/compare")
    cmp_id = saved["id"]
    root = gradio_client.Client(srv.url, auth=("root", "root-pw"), verbose=False)
    exported = root.predict(fmt="jsonl", task="", api_name="/export_comparisons")
    record = json.loads(open(exported, encoding="utf-8").read())
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({**record, "comment": "overwritten", "preference": "B", "updated_at": LATER},
                                ensure_ascii=False) + "\n", encoding="utf-8")

    page = RawSession.login(srv.url, "alice", "alice-pw")     # alice deletes her own on the page: pick, press twice
    select(page, "compare_refresh", "compare_pick", cmp_id)
    assert "Confirm delete?" in page.text("compare_delete", [None, None])
    assert "Deleted comparison" in page.text("compare_delete", [None, None])
    row, versions = db_state(db, cmp_id)
    assert row[0] is not None and row[1:] == ("alice", "mine", "A") and versions == [(1, "delete", "alice", "mine")]

    result = root.predict(file=gradio_client.handle_file(str(newer)), api_name="/import_comparisons")
    assert (result["added"], result["updated"], result["skipped"], result["deleted"]) == (0, 0, 1, 1), result
    assert "1 deleted here" in result["message"]
    assert db_state(db, cmp_id) == (row, versions)                # still deleted, unchanged, nothing versioned

    admin_page = RawSession.login(srv.url, "root", "root-pw")    # an admin restores it; then the import applies
    select(admin_page, "compare_refresh", "compare_pick_deleted", cmp_id)
    assert "Restored comparison" in admin_page.text("compare_restore", [None])
    result = root.predict(file=gradio_client.handle_file(str(newer)), api_name="/import_comparisons")
    assert (result["updated"], result["deleted"]) == (1, 0)
    row, versions = db_state(db, cmp_id)
    assert row == (None, "", "overwritten", "B")
    assert versions == [(1, "delete", "alice", "mine"), (2, "restore", "root", "mine"), (3, "import", "root", "mine")]
