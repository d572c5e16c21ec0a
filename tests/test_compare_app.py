"""Comparisons through the real app (`python app.py --demo`) and its real SQLite file: /compare saves and refuses
bad input with a clear error (nothing saved); /export_comparisons and /import_comparisons round-trip every field in
CSV, JSONL and Parquet (multilingual and right-to-left text, spans on both sides)."""
import sqlite3

import pytest

import apphost
from app.annotation.comparisons import get_comparison, query_comparisons, to_flat
from app.annotation.store import AnnotationStore

gradio_client = pytest.importorskip("gradio_client")

IN = "قالت الحكومة إن المشروع سينتهي في عام ٢٠٣٠. Der Plan — 東京 🎉"
OUT_A = "المشروع ينتهي ٢٠٣٠ 🎉"
OUT_B = "Der Plan endet 2030. שלום"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-app")
    db = root / "annotations.db"
    srv = apphost.start(root / "server.log", env={"MT5_STUDIO_DEMO_DIR": str(root / "demo"),
                                                  "MT5_STUDIO_DB": str(db)})
    yield gradio_client.Client(srv.url, verbose=False), db
    srv.stop()


def count(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]


def call(client, **kw):
    base = dict(task="summarization", input_text=IN, model_a="demo/generation", output_a=OUT_A,
                model_b="demo/generation", output_b=OUT_B, preference="B", annotator="Amina",
                decoding_a='{"num_beams": 1}', decoding_b='{"num_beams": 4}', protocol="esa",
                spans=[{"start": 0, "end": 7, "side": "A", "category": "", "severity": "major"},
                       {"start": 21, "end": 25, "side": "B", "category": "fluency", "severity": "minor"},
                       {"start": 6, "end": 12, "side": "input", "category": "omission", "severity": "critical"}],
                comment="B keeps «الحكومة»; =1+1")
    return client.predict(**(base | kw), api_name="/compare")


def test_compare_endpoint_saves_and_returns_the_stored_record(app):
    client, db = app
    result = call(client)
    assert result["preference"] == "B" and result["winner"] == "demo/generation"
    assert [s["side"] for s in result["spans"]] == ["A", "B", "input"]     # sorted by side
    with AnnotationStore(db) as store:
        c = get_comparison(store, result["id"])
    assert [(s["side"], s["severity"]) for s in c.spans] == [("A", "major"), ("B", "minor"), ("input", "critical")]
    assert (c.output_a[0:7], c.output_b[21:25], c.input[6:12]) == ("المشروع", "שלום", "لحكومة")
    assert (c.system_a.decoding, c.system_b.decoding, c.input, c.annotator) == \
        ({"num_beams": 1}, {"num_beams": 4}, IN, "Amina")


@pytest.mark.parametrize("change, message", [
    (dict(spans=[{"start": 0, "end": 200, "side": "A", "category": "", "severity": "major"}]), "outside the A"),
    (dict(spans=[{"start": 0, "end": 5, "side": "B", "category": "fluency", "severity": "major"},
                 {"start": 2, "end": 8, "side": "B", "category": "fluency", "severity": "minor"}]),
     "overlaps span 1"),
    (dict(spans=[{"start": 0, "end": 5, "side": "B", "category": "", "severity": "huge"}]), "unknown severity"),
    (dict(decoding_b='{"num_beams": 1}'), "A and B are the same system"),
    (dict(preference="maybe"), "preference 'maybe' is not one of"),
])
def test_bad_comparisons_raise_and_save_nothing(app, change, message):
    client, db = app
    before = count(db)
    with pytest.raises(Exception, match=message):
        call(client, **change)
    assert count(db) == before


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_and_reimport_through_the_app(app, fmt):
    client, db = app
    call(client, preference="tie", protocol="mqm", output_a="=SUM(A1)\r\nrow",
         spans=[{"start": 0, "end": 4, "side": "A", "category": "accuracy", "severity": "major"},
                {"start": 0, "end": 3, "side": "B", "category": "fluency/punctuation", "severity": "minor"}])
    with AnnotationStore(db) as store:
        before = [to_flat(c) for c in query_comparisons(store)]
    assert len(before) >= 2 and {r["protocol"] for r in before} >= {"esa", "mqm"}
    path = client.predict(fmt=fmt, task="", api_name="/export_comparisons")
    with sqlite3.connect(db) as conn:      # the app's file loses them all ...
        conn.execute("DELETE FROM comparisons")
    assert count(db) == 0
    result = client.predict(file=gradio_client.handle_file(path), api_name="/import_comparisons")
    assert (result["added"], result["updated"], result["skipped"]) == (len(before), 0, 0)
    with AnnotationStore(db) as store:     # ... and gets them back, every field equal
        assert [to_flat(c) for c in query_comparisons(store)] == before
    again = client.predict(file=gradio_client.handle_file(path), api_name="/import_comparisons")
    assert again["skipped"] == len(before) and count(db) == len(before)


# ---------------------------------------------------------------------------------------------------------------
# The Compare tab's and the compare jobs' handlers, called as the page calls them (open use)


SYSTEMS = ({"model_id": "demo/generation", "decoding": {"num_beams": 1}},
           {"model_id": "demo/generation", "decoding": {"num_beams": 4}})


def test_a_stand_alone_comparison_reveals_the_systems_once_saved(tmp_path):
    import dataclasses

    from app.annotation.rights import OPEN
    from app.annotation.tabs import compare

    pair = compare.Pair("summarization", {"text": IN}, SYSTEMS, (OUT_A, OUT_B), flipped=True)
    with AnnotationStore(tmp_path / "pair.db") as store:
        unsaved = compare.compare_save(store, OPEN, dataclasses.asdict(pair), None, "Dan", "", "esa", [])
        assert "Not saved: choose a preference" in unsaved["status"] and "was system" not in unsaved["status"]
        saved = compare.compare_save(store, OPEN, dataclasses.asdict(pair), "B", "Dan", "", "esa", [])
        # the status line sits under the judged pair (which stays on show): A was system 2 (flipped)
        assert "A was system 2" in saved["status"] and "B was system 1" in saved["status"]
        (c,) = query_comparisons(store)
        assert saved["pair"]["saved_id"] == c.id and (c.output_a, c.system_a.decoding) == (OUT_B, {"num_beams": 4})
        again = compare.compare_save(store, OPEN, saved["pair"], "A", "Dan", "", "esa", [])
        assert "saved already" in again["status"] and len(query_comparisons(store)) == 1


def test_a_compare_job_queue_stays_blind_after_every_save(tmp_path):
    import json

    from app.annotation.batch import BatchInput
    from app.annotation.comparisons import create_compare_job, run_compare_job
    from app.annotation.rights import OPEN
    from app.annotation.tabs import compare

    with AnnotationStore(tmp_path / "job.db") as store:
        job = create_compare_job(store, [BatchInput("שלום עולם"), BatchInput("Guten Tag")], task="summarization",
                                 systems=list(SYSTEMS))
        run_compare_job(store, job.id, lambda n, row: f"system {n} says {row.text}")
        first = compare.cjob_pick(store, OPEN, job.id)
        assert first["index"] == 0 and "0 of 2 judged" in first["where"]
        saved = compare.cjob_save_next(store, OPEN, job.id, 0, "A", "Dan", "", "esa", [])
        shown = json.dumps(saved, default=str)
        assert "Saved comparison" in saved["status"] and "1 of 2 judged" in saved["where"] and saved["index"] == 1
        assert "was system" not in shown and "num_beams" not in shown   # no reveal, not even of the row judged
        last = compare.cjob_save_next(store, OPEN, job.id, 1, "tie", "Dan", "", "esa", [])
        assert "2 of 2 judged" in last["where"] and "was system" not in json.dumps(last, default=str)
        assert len(query_comparisons(store)) == 2
