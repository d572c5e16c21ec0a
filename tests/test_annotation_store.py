"""The annotation store on a real SQLite file and a real PostgreSQL server (`databases`, tests/pgserver.py): save,
edit, delete, filter, validation, migrations, threads, crash."""
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.annotation.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from app.annotation.store import (MAX_COMMENT_BYTES, Annotation, AnnotationStore, default_db_path, item_key,
                                  load_error_categories)

REPO = Path(__file__).resolve().parent.parent


def make(**kw) -> Annotation:
    base = dict(task="summarize", model_id="google/mt5-small", model_revision="main", family="mt5",
                dtype="float32", decoding={"num_beams": 4, "max_new_tokens": 64, "length_penalty": 0.6},
                input="Текст для резюме.", output="Резюме.", rating=4, corrected_output="Краткое резюме.",
                error_categories=["fluency"], comment="ok", annotator="Amina", app_version="0.1")
    return Annotation(**(base | kw))


@pytest.fixture
def store(databases):
    with AnnotationStore(databases("ann.db")) as s:
        yield s


def test_save_get_fills_id_times_and_item_key(store):
    ann_id = store.save(make())
    got = store.get(ann_id)
    assert got.id == ann_id and len(ann_id) == 32
    assert got.item_key == item_key("summarize", "google/mt5-small", "Текст для резюме.", "Резюме.")
    assert got.created_at == got.updated_at and got.created_at.endswith("Z")
    assert got.decoding == {"num_beams": 4, "max_new_tokens": 64, "length_penalty": 0.6}
    assert got.error_categories == ["fluency"] and got.rating == 4
    assert store.get("nope") is None
    assert store.schema_version == SCHEMA_VERSION
    if store.dialect.name == "sqlite":
        assert store.read("PRAGMA journal_mode")[0][0] == "wal"


def test_update_and_delete(store):
    ann_id = store.save(make())
    before = store.get(ann_id)
    new = store.update(ann_id, rating=2, comment="a\nb\tc", error_categories=["omission", "terminology"])
    got = store.get(ann_id)
    assert got == new
    assert (got.rating, got.comment, got.error_categories) == (2, "a\nb\tc", ["omission", "terminology"])
    assert got.created_at == before.created_at and got.updated_at >= before.updated_at
    assert store.update(ann_id, rating=None).rating is None
    with pytest.raises(ValueError, match="cannot change input"):
        store.update(ann_id, input="other")
    with pytest.raises(KeyError):
        store.update("missing", rating=3)
    assert store.delete(ann_id) is True
    assert store.get(ann_id) is None and store.delete(ann_id) is False


def test_query_filters_and_counts(store):
    day = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    rows = [("summarize", "m1", "Amina", 1, day), ("summarize", "m2", "Bo", 3, day + dt.timedelta(days=1)),
            ("answer", "m1", "Amina", 5, day + dt.timedelta(days=2)),
            ("tag", "m2", "Chen", None, day + dt.timedelta(seconds=1))]
    for i, (task, model, who, rating, when) in enumerate(rows):
        store.save(make(task=task, model_id=model, annotator=who, rating=rating, input=f"in {i}",
                        created_at=when.isoformat()))
    assert len(store.query()) == store.count() == 4
    assert [a.input for a in store.query(task="summarize")] == ["in 0", "in 1"]
    assert {a.input for a in store.query(model="m1")} == {"in 0", "in 2"}
    assert store.count(annotator="Amina") == 2
    assert store.count(min_rating=3) == 2 and store.count(max_rating=3) == 2   # unrated left out
    assert store.count(min_rating=2, max_rating=4) == 1
    assert store.count(since="2026-03-02") == 2
    assert store.count(until=dt.date(2026, 3, 2)) == 3          # a date includes that whole day
    assert store.count(until="2026-03-02T00:00:00Z") == 2
    assert store.count(since=day, until=day) == 1
    assert store.count(task="summarize", model="m2", annotator="Bo") == 1
    assert [a.input for a in store.query(limit=2, offset=1)] == ["in 3", "in 1"]   # oldest first
    stats = store.stats()
    assert (stats.total, stats.annotators, stats.by_task) == (4, 3, {"answer": 1, "summarize": 2, "tag": 1})
    assert store.distinct("annotator") == ["Amina", "Bo", "Chen"]
    df = store.query_frame(task="summarize")
    assert list(df["error_categories"]) == ["fluency", "fluency"] and len(df) == 2
    with pytest.raises(ValueError, match="not a date"):
        store.query(since="yesterday")


@pytest.mark.parametrize("change, message", [
    (dict(rating=0), "rating must be a whole number from 1 to 5"),
    (dict(rating=6), "rating must be a whole number from 1 to 5"),
    (dict(rating=True), "rating must be"),
    (dict(rating="3"), "rating must be"),
    (dict(error_categories=["fluency", "grammar"]), "unknown error category 'grammar'"),
    (dict(annotator="  "), "annotator name is empty"),
    (dict(family="bert"), "family 'bert' is not one of mt5, umt5, t5"),
    (dict(task=""), "`task` is empty"),
    (dict(decoding={"x": float("nan")}), "not plain JSON"),
    (dict(comment="x" * (MAX_COMMENT_BYTES + 1)), "comment is 65,537 bytes; the limit is 65,536"),
])
def test_validation_rejects_and_saves_nothing(store, change, message):
    with pytest.raises(ValueError, match=message):
        store.save(make(**change))
    assert store.count() == 0


def test_megabyte_comment_changes_nothing(store):
    ann_id = store.save(make())
    before = store.get(ann_id)
    with pytest.raises(ValueError, match=r"comment is 1,048,576 bytes; the limit is 65,536 bytes \(64 KB\)"):
        store.update(ann_id, comment="é" * (512 * 1024), rating=1)
    assert store.get(ann_id) == before
    with pytest.raises(ValueError, match="comment is"):
        store.save(make(comment="x" * 1024 * 1024))
    assert store.count() == 1


def test_hostile_text_stored_verbatim(store):
    text = "<script>alert('x')</script> \u202eevil\u202c =cmd|' /C calc'!A0 \x00 nul"
    ann_id = store.save(make(input=text, output=text, comment=text, corrected_output=text))
    got = store.get(ann_id)
    assert got.input == got.output == got.comment == got.corrected_output == text


def test_categories_come_from_assets_per_task():
    generation = ["accuracy", "fluency", "wrong_language", "hallucination", "omission", "terminology", "other"]
    assert [c.id for c in load_error_categories("summarization")] == generation
    assert [c.id for c in load_error_categories("span_filling")] == generation
    assert [c.id for c in load_error_categories("tagging")] == ["wrong_label", "wrong_boundary", "missed_entity",
                                                                "other"]
    assert [c.id for c in load_error_categories("classification")] == ["wrong_label", "ambiguous_item", "other"]
    for qa in ("question_answering", "generative_qa"):
        assert [c.id for c in load_error_categories(qa)] == ["wrong_span", "not_answerable", "partially_correct",
                                                             "other"]
    every = [c.id for c in load_error_categories()]     # no task, or one the file does not list: all, once each
    assert every[:7] == generation and len(every) == len(set(every)) == 14
    assert all(c.help for c in load_error_categories())
    # the task's own help text: "wrong_label" means one thing for tagging, another for classification
    assert load_error_categories("tagging")[0].help != load_error_categories("classification")[0].help


def test_categories_are_checked_per_task(store):
    with pytest.raises(ValueError, match="unknown error category 'fluency' for classification"):
        store.save(make(task="classification", error_categories=["fluency"]))
    with pytest.raises(ValueError, match="unknown error category 'wrong_span' for tagging"):
        store.save(make(task="tagging", error_categories=["wrong_span"]))
    assert store.count() == 0
    store.save(make(task="question_answering", error_categories=["partially_correct"]))
    store.save(make(task="a task of a script", error_categories=["wrong_label", "fluency"]))
    assert store.count() == 2


def test_default_db_path(tmp_path):
    assert default_db_path({"MT5_STUDIO_DB": str(tmp_path / "x.db")}) == tmp_path / "x.db"
    assert default_db_path({}, space_data_dir=tmp_path) == tmp_path / "annotations.db"
    assert default_db_path({}, space_data_dir=tmp_path / "absent") == REPO / "data" / "annotations.db"


def test_v1_database_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == 1
    conn.execute("INSERT INTO annotations VALUES ('old1', 'k', 'tag', 'm', 'main', 'umt5', 'bfloat16', '{}', 'in', "
                 "'out', 3, '', '[\"other\"]', 'kept', 'Bo', '2025-01-01T00:00:00.000000Z', "
                 "'2025-01-01T00:00:00.000000Z', '0.0')")
    conn.close()
    with AnnotationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 9
        old = store.get("old1")
        assert (old.family, old.error_categories, old.comment, old.rating) == ("umt5", ["other"], "kept", 3)
        assert (old.protocol, old.spans, old.esa_score, old.mqm_score) == ("", [], None, None)
        assert store.read("SELECT COUNT(*) FROM batch_jobs")[0][0] == 0
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this app"):
        AnnotationStore(path)


def test_twenty_threads_lose_nothing(store):
    ids, errors = [], []
    lock = threading.Lock()

    def work(t):
        try:
            for i in range(50):
                ann_id = store.save(make(input=f"thread {t} item {i}", annotator=f"A{t}"))
                with lock:
                    ids.append(ann_id)
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 1000
    assert store.count() == 1000
    assert {a.id for a in store.query()} == set(ids)
    assert {a.input for a in store.query()} == {f"thread {t} item {i}" for t in range(20) for i in range(50)}


CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from app.annotation.store import Annotation, AnnotationStore
store = AnnotationStore(sys.argv[1])
i = 0
while True:
    ann_id = store.save(Annotation(task="summarize", model_id="m", input=f"{i} " + "ж" * 4000, output="o",
                                   annotator="killed", comment="c" * 8000))
    print(ann_id, flush=True)   # printed only after the commit returned
    i += 1
"""


def test_sigkill_while_saving_keeps_every_committed_annotation(databases):
    path = databases("crash.db")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(REPO)], stdout=subprocess.PIPE, text=True)
    printed = []
    try:
        for line in child.stdout:
            printed.append(line.strip())
            if len(printed) >= 300:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    rest = child.stdout.read().split("\n")
    printed += [x for x in rest if len(x) == 32]   # a last line cut short by the kill is not a promise
    assert child.returncode == -signal.SIGKILL
    with AnnotationStore(path) as store:
        assert store.integrity_check() == "ok"
        present = {a.id for a in store.query()}
        assert set(printed) <= present
        assert len(present) - len(printed) <= 1    # at most the save the kill interrupted after its commit


def test_both_backends_implement_the_declared_interface():
    import inspect

    from app.annotation.backends import Backend, PostgresBackend, SQLiteBackend
    declared = {name: inspect.signature(fn) for name, fn in vars(Backend).items()
                if inspect.isfunction(fn) and not name.startswith("_")}
    assert set(declared) == {"connection", "write", "read", "integrity_check", "close"}
    for cls in (SQLiteBackend, PostgresBackend):
        for name, signature in declared.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == list(signature.parameters), (cls, name)
