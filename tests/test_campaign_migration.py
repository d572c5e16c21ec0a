"""A database written by the code before campaigns opens with today's store, migrates, and keeps every annotation,
comparison, span, version and job, field for field (issue 22, "Done when"), on SQLite and PostgreSQL: the
annotations' three score columns (rating, esa_score, mqm_score) end up in one `scores` JSON object (v8) with every
value, and the versions kept as JSON of the old records read back as they were.

The database is written by the old code itself — the app as of commit bf10f85^ (schema v5) and bf10f85 (v6, the
commit campaigns were built on), taken from git history into a folder and run in a child process — so what is
checked is what that code really wrote, not a reconstruction of it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.annotation.comparisons import get_comparison
from app.annotation.backends import open_backend
from app.annotation.schema import MIGRATIONS, SCHEMA_VERSION
from app.annotation.store import SCORES, AnnotationStore

REPO = Path(__file__).resolve().parent.parent
OLD = {"bf10f85^": 5, "bf10f85": 6}     # commit -> its schema version

# Runs inside the old code's folder (argv: database, result file). Writes annotations (a plain one, ESA and MQM
# with spans, one edited twice, one deleted, one deleted and restored), comparisons (one edited, one deleted), a
# batch job with an annotated row and a compare job with a judged row; dumps what the old store reads back.
WRITER = r'''
import dataclasses, json, random, sys
from pathlib import Path
from app.annotation.store import Annotation, AnnotationStore
from app.annotation import batch, comparisons as cmp

db, out = sys.argv[1], Path(sys.argv[2])
store = AnnotationStore(db)
def span(start, end, side="output", category="accuracy", severity="minor"):
    return {"start": start, "end": end, "side": side, "category": category, "severity": severity}
def make(i, **kw):
    return Annotation(task="summarization", model_id="google/mt5-small", input=f"Eingabe Nummer {i} – schön",
                      output=f"output number {i}", annotator=kw.pop("annotator", "alice"), owner="alice",
                      decoding={"num_beams": 4}, **kw)
ids = {
    "plain": store.save(make(1, rating=4, error_categories=["fluency"], comment="fine")),
    "esa": store.save(make(2, protocol="esa", esa_score=71, spans=[span(0, 6), span(7, 13, "input", "", "major")])),
    "mqm": store.save(make(3, protocol="mqm", spans=[span(0, 6, category="accuracy", severity="major")])),
    "edited": store.save(make(4, rating=2, annotator="bob")),
    "deleted": store.save(make(5, rating=1)),
    "restored": store.save(make(6, rating=3)),
}
store.update(ids["edited"], rating=3, comment="second look", by="bob")
store.update(ids["edited"], rating=5, protocol="esa", esa_score=90, spans=[span(0, 3)], by="bob")
store.delete(ids["deleted"], by="alice")
store.delete(ids["restored"], by="alice")
store.restore(ids["restored"], by="admin")

a, b = cmp.System("google/mt5-small", dtype="float32", decoding={"num_beams": 4}), cmp.System("google/umt5-small")
def comparison(i, **kw):
    return cmp.Comparison(task="summarization", input=f"Vergleich {i}", system_a=a, output_a=f"first {i}",
                          system_b=b, output_b=f"second {i}", annotator="carol", **kw)
cids = {
    "edited": cmp.save_comparison(store, comparison(1, preference="A", spans=[span(0, 5, "A")]), owner="carol"),
    "deleted": cmp.save_comparison(store, comparison(2, preference="tie", protocol="mqm",
                                                     spans=[span(0, 6, "B", "fluency", "minor")]), owner="carol"),
}
cmp.update_comparison(store, cids["edited"], preference="B", comment="changed my mind", spans=[span(0, 6, "B")])
cmp.delete_comparison(store, cids["deleted"], by="carol")

job = batch.create_job(store, [batch.BatchInput("Zeile eins"), batch.BatchInput("Zeile zwei")], task="summarization",
                       settings={"model_id": "google/mt5-small", "dtype": "float32", "decoding": {"num_beams": 2}},
                       name="news")
batch.run_batch(store, job.id, lambda row: f"processed {row.index}")
rows = batch.job_rows(store, job.id)
ids["batch_row"] = batch.annotate_row(store, job.id, 0, batch.annotation_for(job, rows[0], annotator="dan", rating=4))
systems = [{"model_id": "google/mt5-small"}, {"model_id": "google/umt5-small"}]
cjob = cmp.create_compare_job(store, [batch.BatchInput("Paar eins"), batch.BatchInput("Paar zwei")],
                              task="summarization", systems=systems, source="pairs.jsonl", owner="carol",
                              rng=random.Random(1))
cmp.run_compare_job(store, cjob.id, lambda n, row: f"system {n} on {row.index}")
crow = cmp.compare_rows(store, cjob.id)[1]
cids["job_row"] = cmp.judge_row(store, cjob.id, 1, cmp.comparison_for_row(cjob, crow, preference="both_bad",
                                                                          annotator="carol"), owner="carol")

seen = {
    "schema": store.schema_version,
    "ids": ids, "cids": cids, "job": job.id, "cjob": cjob.id,
    "annotations": {k: dataclasses.asdict(store.get(i, include_deleted=True)) for k, i in ids.items()},
    "history": {k: [dataclasses.asdict(v) for v in store.history(i)] for k, i in ids.items()},
    "deleted": {k: store.deleted_info(i) for k, i in ids.items()},
    "comparisons": {k: dataclasses.asdict(cmp.get_comparison(store, i, deleted=True)) for k, i in cids.items()},
}
out.write_text(json.dumps(seen, ensure_ascii=False), encoding="utf-8")
'''


@pytest.fixture(scope="module")
def old_code(tmp_path_factory):
    """commit -> a folder holding that commit's app/, assets/ and model/ (from git history)."""
    root = tmp_path_factory.mktemp("old-code")
    trees = {}
    for commit in OLD:
        folder = root / commit.replace("^", "-parent")
        folder.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "app", "assets", "model"],
                                 capture_output=True)
        if archive.returncode != 0:
            pytest.skip(f"commit {commit} is not in this checkout's history (a shallow clone?): "
                        f"{archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
        trees[commit] = folder
    return trees


def tables(store: AnnotationStore, names: list[str]) -> dict[str, list[dict]]:
    """Every row of each table, as {column: value}, in primary-key order."""
    out = {}
    for name in names:
        rows = store.read(f"SELECT * FROM {name}")
        out[name] = sorted(({k: r[k] for k in r.keys()} for r in rows), key=lambda r: json.dumps(r, sort_keys=True))
    return out


def old_tables(location, version: int) -> dict[str, list[dict]]:
    """The tables of a database at schema `version`, read before today's store migrates it."""
    names = [t for step in MIGRATIONS[:version] for sql in step if sql.lstrip().startswith("CREATE TABLE")
             for t in [sql.split()[2]]]
    backend = open_backend(location)
    try:
        with backend.connection() as conn:
            assert backend.dialect.version(conn) == version
            return {t: sorted(({k: r[k] for k in r.keys()} for r in conn.execute(f"SELECT * FROM {t}").fetchall()),
                              key=lambda r: json.dumps(r, sort_keys=True)) for t in names}
    finally:
        backend.close()


@pytest.mark.parametrize("commit", list(OLD))
def test_old_database_migrates_and_keeps_everything(databases, old_code, commit, tmp_path):
    location = databases("old.db")
    seen_file = tmp_path / "seen.json"
    child = subprocess.run([sys.executable, "-c", WRITER, str(location), str(seen_file)], cwd=old_code[commit],
                           capture_output=True, text=True, timeout=300,
                           env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(old_code[commit])})
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(seen_file.read_text(encoding="utf-8"))
    assert seen["schema"] == OLD[commit]
    before = old_tables(location, OLD[commit])
    assert len(before["annotations"]) == 7 and len(before["comparisons"]) == 3
    assert len(before["annotation_versions"]) == 5     # two edits, two deletes, one restore

    with AnnotationStore(location) as store:
        assert store.schema_version == SCHEMA_VERSION == 9
        assert store.integrity_check() == "ok"
        after = tables(store, list(before))
        assert {"rating", "esa_score", "mqm_score"}.isdisjoint(after["annotations"][0]), "v8 drops the columns"
        for name in before:                            # every row of every old table, field for field
            assert _scores_as_json(after, name) == _scores_as_json(before, name), name
        for key, ann_id in seen["ids"].items():        # and as today's store reads them
            a = store.get(ann_id, include_deleted=True)
            assert _plain(a) == seen["annotations"][key], key
            assert [_plain(v) for v in store.history(ann_id)] == seen["history"][key], key
            assert _plain(store.deleted_info(ann_id)) == seen["deleted"][key], key
        for key, cmp_id in seen["cids"].items():
            c = get_comparison(store, cmp_id, deleted=True)
            assert _plain(c) == seen["comparisons"][key], key
        esa = store.get(seen["ids"]["esa"])
        assert (esa.protocol, esa.esa_score, sorted(s["side"] for s in esa.spans)) == ("esa", 71, ["input", "output"])
        assert store.get(seen["ids"]["mqm"]).mqm_score == 5.0
        scores = {r["id"]: json.loads(r["scores"]) for r in store.read("SELECT id, scores FROM annotations")}
        assert [scores[seen["ids"][k]] for k in ("plain", "esa", "mqm", "edited", "deleted")] == \
            [{"likert": 4}, {"esa": 71}, {"mqm": 5.0}, {"likert": 5, "esa": 90}, {"likert": 1}]
        assert store.query(min_rating=4, max_rating=4, owner="alice") == [store.get(seen["ids"]["plain"])]
        assert store.get(seen["ids"]["deleted"]) is None and store.get(seen["ids"]["restored"]) is not None
        assert store.read("SELECT COUNT(*) FROM campaigns")[0][0] == 0      # the new tables are there, empty


def _scores_as_json(tables: dict[str, list[dict]], name: str) -> list[dict]:
    """The rows of one table; annotations' scores as one object (from today's `scores`, or from the three columns
    of the old schema), so that a database before and after v8 compare field for field; compare job rows of
    before v9 get the empty reference v9 gives them."""
    rows = [dict(r) for r in tables[name]]
    if name == "comparison_job_rows":
        rows = [{"reference": "", "metricx_1": None, "metricx_2": None, **row} for row in rows]
    if name == "annotations":
        for row in rows:
            if "scores" in row:
                row["scores"] = json.loads(row["scores"])
            else:
                row["scores"] = {key: row.pop(field) for field, key in SCORES.items() if row[field] is not None}
                for field in SCORES:
                    row.pop(field, None)
    return sorted(rows, key=lambda r: r["id"] if name == "annotations" else json.dumps(r, sort_keys=True))


def _plain(value):
    """A dataclass (or a tuple/list/None) as the JSON the writer dumped."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, ensure_ascii=False))
