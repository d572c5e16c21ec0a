"""Batch jobs: input validation, a resumable run across a restart, the annotation queue."""
import json

import pytest

from app.annotation.batch import (BatchInput, annotate_row, annotation_for, create_job, delete_job, get_job, get_row,
                                  job_progress, job_rows, list_jobs, load_inputs, next_index, next_unannotated,
                                  previous_index, queue_position, run_batch)
from app.annotation.store import AnnotationStore

SETTINGS = {"model_id": "google/mt5-small", "model_revision": "main", "family": "mt5", "dtype": "float32",
            "decoding": {"num_beams": 2}, "app_version": "0.1"}


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_load_csv_and_jsonl(tmp_path):
    csv_path = write(tmp_path / "in.csv", 'id,Text\n1,"שלום, עולם"\n2,"two\nlines"\n3,NA\n')
    assert [x.text for x in load_inputs(csv_path)] == ["שלום, עולם", "two\nlines", "NA"]
    jsonl = write(tmp_path / "in.jsonl", '{"input": "<script>x</script>"}\n\n{"input": "日本語", "extra": 1}\n')
    assert [x.text for x in load_inputs(jsonl)] == ["<script>x</script>", "日本語"]
    qa = write(tmp_path / "qa.csv", "question,context\nWho?,Ada wrote it.\n")
    assert load_inputs(qa) == [BatchInput("", "Who?", "Ada wrote it.")]
    bom = write(tmp_path / "bom.csv", "\ufefftext\nhello\n")
    assert load_inputs(bom) == [BatchInput("hello")]


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", "", "empty.csv is empty"),
    ("blank.jsonl", "\n  \n", "blank.jsonl is empty"),
    ("header.csv", "text\n", "header.csv has a header but no rows"),
    ("cols.csv", "sentence,label\nhi,1\n", r"cols.csv has no `text` column \(found: label, sentence\)"),
    ("many.csv", "text\n" + "x\n" * 11, "many.csv has 11 rows; the limit is 10 per batch"),
    ("blankrow.csv", 'text,n\nok,1\n"",2\n', r"blankrow.csv row 2: `text` is empty"),
    ("badline.jsonl", '{"text": "a"}\n{"text": \n', "badline.jsonl line 2: not valid JSON"),
    ("number.jsonl", '{"text": 5}\n', r"number.jsonl line 1: `text` must be text"),
    ("noquestion.csv", "question,context\n,ctx\n", r"row 1: `question` is empty"),
    ("in.txt", "text\nx\n", "upload a .csv or .jsonl"),
])
def test_load_rejects_bad_files(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        load_inputs(write(tmp_path / name, content), max_rows=10)


def test_load_rejects_bad_encoding(tmp_path):
    with pytest.raises(ValueError, match=r"latin.csv is not UTF-8 text \(byte 0xe9 at position 8\)"):
        load_inputs(write(tmp_path / "latin.csv", "text\ncafé\n", encoding="latin-1"))


def test_run_resumes_after_restart_and_retries_failures(databases):
    path = databases("batch.db")
    inputs = [BatchInput(f"input {i}") for i in range(10)]
    store = AnnotationStore(path)
    job = create_job(store, inputs, task="summarize", settings=SETTINGS, source="in.csv")
    calls, seen = [], []

    def crashing(row):
        calls.append(row.index)
        if row.index == 6:
            raise KeyboardInterrupt("the process dies here")    # not caught: like a killed process
        if row.index == 3:
            raise RuntimeError("input too long")                  # caught: stored on the row
        return row.text.upper()

    with pytest.raises(KeyboardInterrupt):
        run_batch(store, job.id, crashing, progress=lambda done, total: seen.append((done, total)))
    assert calls == [0, 1, 2, 3, 4, 5, 6]
    assert seen == [(0, 10), (1, 10), (2, 10), (3, 10), (3, 10), (4, 10), (5, 10)]
    store.close()

    store = AnnotationStore(path)                                  # "restart": a new store on the same file
    assert list_jobs(store) == [job] and get_job(store, job.id).settings == SETTINGS
    p = job_progress(store, job.id)
    assert (p.total, p.processed, p.failed, p.annotated) == (10, 5, 1, 0)
    assert get_row(store, job.id, 3).error == "RuntimeError: input too long"
    calls.clear()
    result = run_batch(store, job.id, lambda row: calls.append(row.index) or row.text.upper())
    assert calls == [3, 6, 7, 8, 9]                                # done rows skipped; the failed one retried
    assert (result.processed, result.failed, result.skipped, result.total) == (5, 0, 5, 10)
    assert [r.output for r in job_rows(store, job.id)] == [f"INPUT {i}" for i in range(10)]
    assert job_progress(store, job.id).failed == 0
    calls.clear()
    assert run_batch(store, job.id, lambda row: calls.append(row) or "x").skipped == 10 and calls == []
    store.close()


def test_run_can_stop_and_rejects_non_text(databases):
    with AnnotationStore(databases("b.db")) as store:
        job = create_job(store, [BatchInput("a"), BatchInput("b")], task="tag", settings=SETTINGS)
        result = run_batch(store, job.id, lambda row: "ok", should_stop=lambda: True)
        assert result.stopped and result.processed == 0
        run_batch(store, job.id, lambda row: {"not": "text"})
        assert get_row(store, job.id, 0).error.startswith("TypeError: the batch process must return text")


def test_queue_navigation_and_counts(databases):
    with AnnotationStore(databases("q.db")) as store:
        job = create_job(store, [BatchInput(f"t{i}") for i in range(5)] + [BatchInput("", "Q?", "C.")],
                         task="answer", settings=SETTINGS)
        run_batch(store, job.id, lambda row: f"out {row.index}")
        pos = queue_position(store, job.id, 0)
        assert (pos.label, pos.position_label) == ("0 of 6 done", "item 1 of 6")
        assert (pos.previous_index, pos.next_index, pos.next_unannotated) == (None, 1, 1)
        assert pos.row.text == "t0" and pos.row.output == "out 0"
        for index in (0, 2, 3):
            row = get_row(store, job.id, index)
            ann_id = annotate_row(store, job.id, index,
                                  annotation_for(job, row, annotator="Amina", rating=4, error_categories=["fluency"]))
            saved = store.get(ann_id)
            assert (saved.model_id, saved.dtype, saved.decoding) == ("google/mt5-small", "float32", {"num_beams": 2})
            assert (saved.input, saved.output, saved.corrected_output) == (f"t{index}", f"out {index}", f"out {index}")
        pos = queue_position(store, job.id, 2)
        assert pos.label == "3 of 6 done" and pos.row.annotated
        assert (pos.previous_index, pos.next_index, pos.next_unannotated) == (1, 3, 4)
        assert next_index(store, job.id, 2, unannotated_only=True) == 4
        assert previous_index(store, job.id, 3, unannotated_only=True) == 1
        assert previous_index(store, job.id, 0) is None and next_index(store, job.id, 5) is None
        assert next_unannotated(store, job.id, 5) == 1                 # wraps round to the start
        last = queue_position(store, job.id, 5)
        assert last.next_index is None and last.row.input_text == "question: Q? context: C."
        with pytest.raises(IndexError, match="rows 0–5, not 6"):
            queue_position(store, job.id, 6)
        store.delete(get_row(store, job.id, 3).annotation_id)          # deleting an annotation un-does its row
        assert job_progress(store, job.id).label == "2 of 6 done"
        assert delete_job(store, job.id) and store.count() == 2         # annotations outlive their job
        with pytest.raises(KeyError):
            job_progress(store, job.id)


def test_create_job_validates(databases):
    with AnnotationStore(databases("c.db")) as store:
        with pytest.raises(ValueError, match="at least one input"):
            create_job(store, [], task="summarize")
        with pytest.raises(ValueError, match="not plain JSON"):
            create_job(store, [BatchInput("x")], task="summarize", settings={"f": object()})
        assert list_jobs(store) == []
        job = create_job(store, [BatchInput("x")], task="summarize")
        with pytest.raises(ValueError, match="has no output yet"):
            annotation_for(job, get_row(store, job.id, 0), annotator="A")
        assert json.loads(store.read("SELECT settings FROM batch_jobs")[0][0]) == {}
