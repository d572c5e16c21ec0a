"""Batch jobs: a file of inputs run through one task, stored in the annotation database, walked as a queue.

A job and its rows live in the same SQLite file as the annotations (tables `batch_jobs`, `batch_rows`), and
every row's result is committed as soon as it is computed, so a job killed half-way resumes where it stopped.
A row is *processed* when it has an output, *annotated* when an annotation is linked to it; the queue's
"12 of 200 done" counts annotated rows.
"""
from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import __version__
from ..prompts import qa_prompt
from ..settings import MAX_ROWS
from ..tasklist import TASKS
from .api import decoding_dict, dtype_label
from .exchange import decode_utf8, jsonl_rows
from .store import MAX_TEXT_BYTES, Annotation, AnnotationStore, insert_annotation, utc_now

TEXT_COLUMNS = ("text", "input")


@dataclass(frozen=True)
class BatchInput:
    """One input row: `text`, or for question answering `question` and `context` (text optional); `reference`:
    the row's human reference output, if the file has a `reference` column (compare jobs score against it)."""
    text: str
    question: str = ""
    context: str = ""
    reference: str = ""


@dataclass(frozen=True)
class BatchJob:
    """A stored job. `settings` holds what the task needs and what annotations record as provenance:
    model_id, model_revision, family, dtype, decoding, app_version (see `annotation_for`)."""
    id: str
    name: str
    task: str
    settings: dict[str, Any]
    source: str
    total: int
    created_at: str


@dataclass(frozen=True)
class BatchRow:
    job_id: str
    index: int
    text: str
    question: str
    context: str
    output: str | None
    error: str | None
    processed_at: str | None
    annotation_id: str | None

    @property
    def processed(self) -> bool:
        return self.output is not None

    @property
    def annotated(self) -> bool:
        return self.annotation_id is not None

    @property
    def inputs(self) -> dict[str, str]:
        """The row's inputs by field name, as a task reads them (`app.tasklist.Task.fields`)."""
        return {"text": self.text, "question": self.question, "context": self.context}

    @property
    def input_text(self) -> str:
        """The input as an annotation records it: the text, or "question: … context: …" for QA rows."""
        if self.question:
            return qa_prompt(self.question, self.context)
        return self.text


@dataclass(frozen=True)
class JobProgress:
    total: int
    processed: int
    failed: int
    annotated: int

    @property
    def label(self) -> str:
        return f"{self.annotated} of {self.total} done"


@dataclass(frozen=True)
class RunResult:
    """What one `run_batch` call did: rows processed now, rows that failed now (their error is stored, and a
    later run retries them), rows skipped as already processed, and whether it stopped early on request."""
    processed: int
    failed: int
    skipped: int
    total: int
    stopped: bool = False


@dataclass(frozen=True)
class QueuePosition:
    """Where the annotator is in a job's queue. `label` is "12 of 200 done" (annotated rows);
    `position_label` is "item 13 of 200"; prev/next are None at the ends."""
    job_id: str
    index: int
    total: int
    annotated: int
    row: BatchRow
    previous_index: int | None
    next_index: int | None
    next_unannotated: int | None
    label: str = field(init=False)
    position_label: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "label", f"{self.annotated} of {self.total} done")
        object.__setattr__(self, "position_label", f"item {self.index + 1} of {self.total}")


# ---------------------------------------------------------------------------------------------------------------
# Loading an input file


def load_inputs(path: str | Path, *, max_rows: int = MAX_ROWS, text_column: str | None = None) -> list[BatchInput]:
    """Read a CSV, JSONL or Parquet file of inputs: a `text` (or `input`, or `text_column`) column/field, or
    `question` and `context` for QA, and an optional `reference`. Raises ValueError naming the problem: empty
    file, not UTF-8, no text column, too many rows, an empty text, a malformed line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".ndjson", ".parquet"):
        raise ValueError(f"{path.name}: upload a .csv or .jsonl (or .parquet) file of inputs")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path.name} is empty: it needs a `text` column with one input per row")
    if suffix == ".parquet":
        records = _parquet_records(raw, path.name)
    else:
        text = decode_utf8(raw, path.name)
        records = _csv_records(text, path.name) if suffix == ".csv" else \
            [(where, _lowered(rec)) for where, rec in jsonl_rows(text, path.name, example='{"text": "..."}')]
    if not records:
        raise ValueError(f"{path.name} has a header but no rows")
    if len(records) > max_rows:
        raise ValueError(f"{path.name} has {len(records):,} rows; the limit is {max_rows:,} per batch: split the file")
    return _inputs(records, path.name, text_column)


def _parquet_records(raw: bytes, name: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        df = pd.read_parquet(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, …
        raise ValueError(f"{name} cannot be read as Parquet: {e}") from None
    return [(f"{name} row {i}", _lowered(rec)) for i, rec in enumerate(df.to_dict("records"), start=1)]


def _csv_records(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        # Everything as text, and "NA"/"null" stay words: inputs are language, not data.
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises ParserError, EmptyDataError, …
        raise ValueError(f"{name} cannot be read as CSV: {e}") from None
    return [(f"{name} row {i}", _lowered(rec)) for i, rec in enumerate(df.to_dict("records"), start=1)]


def _lowered(rec: dict[Any, Any]) -> dict[str, Any]:
    """Column names as the reader looks them up: `Text ` is `text`."""
    return {str(k).strip().lower(): v for k, v in rec.items()}


def _inputs(records: list[tuple[str, dict[str, Any]]], name: str, text_column: str | None = None) -> list[BatchInput]:
    columns = sorted({k for _, rec in records for k in rec})
    if text_column is not None and text_column.strip().lower() not in columns:
        raise ValueError(f"{name} has no `{text_column}` column (found: {', '.join(columns) or 'none'}): give "
                         "the column with the inputs")
    wanted = (text_column.strip().lower(),) if text_column is not None else TEXT_COLUMNS
    text_col = next((c for c in wanted if c in columns), None)
    qa = "question" in columns and "context" in columns
    if text_col is None and not qa:
        raise ValueError(f"{name} has no `text` column (found: {', '.join(columns) or 'none'}): name the column "
                         "with the inputs `text` or `input`; for question answering, `question` and `context`")
    out = []
    for where, rec in records:
        values = {}
        for key in (text_col, "question" if qa else None, "context" if qa else None,
                    "reference" if "reference" in columns else None):
            if key is None:
                continue
            value = rec.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"{where}: `{key}` must be text, got {json.dumps(value)[:40]}")
            if len(value.encode("utf-8")) > MAX_TEXT_BYTES:
                raise ValueError(f"{where}: `{key}` is over {MAX_TEXT_BYTES:,} bytes")
            values[key] = value
        if qa:
            for key in ("question", "context"):
                if not values[key].strip():
                    raise ValueError(f"{where}: `{key}` is empty")
        elif not values[text_col].strip():
            raise ValueError(f"{where}: `{text_col}` is empty: remove the row or fill it in")
        out.append(BatchInput(values.get(text_col, ""), values.get("question", ""), values.get("context", ""),
                              values.get("reference", "")))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Jobs


def job_settings(loaded: Any, decoding: Any) -> dict[str, Any]:
    """What a job stores: the provenance annotations record, and the request to load the same model again."""
    prov = loaded.provenance()
    return {"model_id": prov["source"], "model_revision": str(prov.get("revision") or ""),
            "family": prov.get("family") or "mt5", "dtype": dtype_label(prov), "decoding": decoding_dict(decoding),
            "app_version": __version__,
            "request": {k: prov.get(k) for k in ("source", "dtype", "device", "quantization")}}


def create_job(store: AnnotationStore, inputs: list[BatchInput], *, task: str,
               settings: dict[str, Any] | None = None, name: str = "", source: str = "",
               results: list[tuple[str | None, str | None]] | None = None) -> BatchJob:
    """Store a new job and all its rows in one transaction; nothing is run yet. `results`: (output, error) of
    every row, for a job computed elsewhere (`import_outputs`)."""
    if results is not None and len(results) != len(inputs):
        raise ValueError(f"{len(results)} results for {len(inputs)} inputs")
    if not inputs:
        raise ValueError("a batch needs at least one input")
    if not task.strip():
        raise ValueError("a batch needs a task")
    settings = dict(settings or {})
    try:
        settings_json = json.dumps(settings, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"batch settings are not plain JSON: {e}") from None
    job = BatchJob(uuid.uuid4().hex, name or source or task, task, settings, source, len(inputs), utc_now())
    with store.transaction() as conn:
        conn.execute("INSERT INTO batch_jobs (id, name, task, settings, source, total, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (job.id, job.name, job.task, settings_json, job.source, job.total, job.created_at))
        if results is None:
            conn.executemany("INSERT INTO batch_rows (job_id, idx, text, question, context) VALUES (?, ?, ?, ?, ?)",
                             [(job.id, i, x.text, x.question, x.context) for i, x in enumerate(inputs)])
        else:
            conn.executemany("INSERT INTO batch_rows (job_id, idx, text, question, context, output, error, "
                             "processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(job.id, i, x.text, x.question, x.context, out, err, job.created_at)
                              for i, (x, (out, err)) in enumerate(zip(inputs, results))])
    return job


# ---------------------------------------------------------------------------------------------------------------
# Jobs run by the batch command (`python -m app batch`), imported as jobs whose rows have their outputs

# A record of the command's output: its `index`, the row's inputs, the output (or the error), the task, the input
# file's name, the job's settings (`job_settings`, device left out: it is the machine's) and the job's `job` key.
RECORD_FIELDS = ("index", "text", "question", "context", "output", "error", "task", "source", "model_id", "job")
SETTINGS_FIELDS = ("model_id", "model_revision", "family", "dtype", "decoding", "app_version", "request")


def output_record(row: BatchInput, output: str | None, error: str | None, *, task: str, source: str,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """One row of the batch command's output (model.batch adds `index` and `job`)."""
    return {"text": row.text, "question": row.question, "context": row.context, "output": output, "error": error,
            "task": task, "source": source, **{k: settings[k] for k in SETTINGS_FIELDS if k in settings}}


def import_outputs(store: AnnotationStore, path: str | Path) -> BatchJob:
    """A job made from the batch command's finished output file: its rows with their outputs (rows that failed
    keep their error; Run / resume retries them). ValueError, nothing stored, for a file that is not such an
    output, one cut short, or one imported before."""
    path = Path(path)
    what = f"{path.name} is not the output of `python -m app batch`"
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{what}: that command writes a .jsonl file (--output)")
    try:
        lines = list(jsonl_rows(path.read_text(encoding="utf-8", errors="replace"), ""))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    records = []
    for where, rec in lines:
        lacks = [k for k in RECORD_FIELDS if k not in rec]
        if lacks:
            raise ValueError(f"{what} ({where} has no {', '.join(f'`{k}`' for k in lacks)}): import the file "
                             "the command wrote, or create a job from an input file above")
        records.append(rec)
    if not records:
        raise ValueError(f"{path.name} is empty")
    first = records[0]
    if any(r["job"] != first["job"] for r in records):
        raise ValueError(f"{path.name} mixes the rows of several jobs: import one command's output")
    indices = [r["index"] for r in records]
    if not all(type(i) is int for i in indices) or sorted(indices) != list(range(len(records))):
        raise ValueError(f"{path.name} does not have every row once (0 to {len(records) - 1}): the command has not "
                         "finished; run it again to complete the file")
    if first["task"] not in TASKS:
        raise ValueError(f"{path.name} is a job of the task {first['task']!r}, which this app does not have")
    before = [j for j in list_jobs(store) if j.settings.get("job") == first["job"]]
    if before:
        raise ValueError(f"{path.name} was imported before, as the job {before[0].name!r}: pick it in the Job list")
    records.sort(key=lambda r: r["index"])
    inputs = [BatchInput(str(r["text"] or ""), str(r["question"] or ""), str(r["context"] or "")) for r in records]
    results = [(None if r["output"] is None else str(r["output"]), None if r["error"] is None else str(r["error"]))
               for r in records]
    settings = {**{k: first[k] for k in SETTINGS_FIELDS if k in first}, "job": first["job"]}
    source = str(first.get("source") or path.name)
    return create_job(store, inputs, task=first["task"], settings=settings, name=f"{source} (batch command)",
                      source=source, results=results)


def get_job(store: AnnotationStore, job_id: str) -> BatchJob:
    rows = store.read("SELECT * FROM batch_jobs WHERE id=?", (job_id,))
    if not rows:
        raise KeyError(f"no batch job with id {job_id!r}")
    return _job(rows[0])


def list_jobs(store: AnnotationStore) -> list[BatchJob]:
    """All jobs, newest first."""
    return [_job(r) for r in store.read("SELECT * FROM batch_jobs ORDER BY created_at DESC, id")]


def delete_job(store: AnnotationStore, job_id: str) -> bool:
    """Delete a job and its rows (annotations made from it stay)."""
    with store.transaction() as conn:
        return conn.execute("DELETE FROM batch_jobs WHERE id=?", (job_id,)).rowcount > 0


def get_row(store: AnnotationStore, job_id: str, index: int) -> BatchRow:
    rows = store.read(f"SELECT {ROW_COLUMNS} FROM batch_rows WHERE job_id=? AND idx=?", (job_id, index))
    if not rows:
        total = get_job(store, job_id).total
        raise IndexError(f"batch job has rows 0–{total - 1}, not {index}")
    return _row(rows[0])


# A row counts as annotated while its annotation is live: a (soft) deleted one puts the row back in the queue,
# and restoring the annotation takes it out again.
LIVE_LINK = ("(annotation_id IS NOT NULL AND annotation_id IN "
             "(SELECT id FROM annotations WHERE deleted_at IS NULL))")
ROW_COLUMNS = (f"job_id, idx, text, question, context, output, error, processed_at, "
               f"CASE WHEN {LIVE_LINK} THEN annotation_id END AS annotation_id")


def job_rows(store: AnnotationStore, job_id: str) -> list[BatchRow]:
    return [_row(r) for r in store.read(f"SELECT {ROW_COLUMNS} FROM batch_rows WHERE job_id=? ORDER BY idx", (job_id,))]


def job_progress(store: AnnotationStore, job_id: str) -> JobProgress:
    r = store.read("SELECT COUNT(*), COUNT(output), COUNT(CASE WHEN output IS NULL THEN error END), "
                   f"COUNT(CASE WHEN {LIVE_LINK} THEN 1 END) FROM batch_rows WHERE job_id=?", (job_id,))[0]
    if r[0] == 0:
        get_job(store, job_id)   # raises KeyError for an unknown job
    return JobProgress(r[0], r[1], r[2], r[3])


def run_batch(store: AnnotationStore, job_id: str, process: Callable[[BatchRow], str],
              progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> RunResult:
    """Run `process` on every row of the job that has no output yet, in order, committing each result at once.

    Rows already processed are skipped, so calling this again after a crash or restart resumes the job. A row
    whose `process` raises gets the error stored and is retried by the next run; the others go on.
    `progress(done, total)` is called before the first row and after each; `should_stop()` is checked before
    each row (a Stop button)."""
    job = get_job(store, job_id)
    pending = [_row(r) for r in store.read(
        f"SELECT {ROW_COLUMNS} FROM batch_rows WHERE job_id=? AND output IS NULL ORDER BY idx", (job_id,))]
    done = job.total - len(pending)
    skipped, processed, failed = done, 0, 0
    if progress:
        progress(done, job.total)
    for row in pending:
        if should_stop and should_stop():
            return RunResult(processed, failed, skipped, job.total, stopped=True)
        try:
            output, error = process(row), None
            if not isinstance(output, str):
                raise TypeError(f"the batch process must return text, got {type(output).__name__}")
        except Exception as e:  # one bad row must not end the job; the error is kept on the row
            output, error = None, f"{type(e).__name__}: {e}"
        with store.transaction() as conn:
            conn.execute("UPDATE batch_rows SET output=?, error=?, processed_at=? WHERE job_id=? AND idx=?",
                         (output, error, utc_now(), job_id, row.index))
        if error is None:
            processed += 1
            done += 1
        else:
            failed += 1
        if progress:
            progress(done, job.total)
    return RunResult(processed, failed, skipped, job.total)


class StopRequests:
    """Stop buttons for running jobs (jobs are shared, as the job list is): `start(job_id)` registers a run
    and gives the `should_stop` to pass to `run_batch`; `request(job_id)` asks it to stop before its next row
    (the rows done stay; running the job again resumes); `finish(job_id)` ends the registration. Thread-safe:
    the Stop click runs beside the running job."""

    def __init__(self):
        self._running: dict[str, bool] = {}   # job id -> stop asked
        self._lock = threading.Lock()

    def start(self, job_id: str) -> Callable[[], bool]:
        with self._lock:
            self._running[job_id] = False
        return lambda: self._running.get(job_id, False)

    def request(self, job_id: str) -> bool:
        """Asks the job to stop; False if it is not running."""
        with self._lock:
            if job_id not in self._running:
                return False
            self._running[job_id] = True
            return True

    def finish(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)


# ---------------------------------------------------------------------------------------------------------------
# The annotation queue


def queue_position(store: AnnotationStore, job_id: str, index: int) -> QueuePosition:
    """The queue at row `index` (0-based): the row, "12 of 200 done", and where previous/next lead."""
    progress = job_progress(store, job_id)
    row = get_row(store, job_id, index)
    return QueuePosition(job_id, index, progress.total, progress.annotated, row,
                         index - 1 if index > 0 else None,
                         index + 1 if index + 1 < progress.total else None,
                         next_unannotated(store, job_id, index))


def next_index(store: AnnotationStore, job_id: str, index: int, *, unannotated_only: bool = False) -> int | None:
    """The row after `index` (optionally the next one not yet annotated); None at the end."""
    if unannotated_only:
        return next_unannotated(store, job_id, index)
    total = get_job(store, job_id).total
    return index + 1 if index + 1 < total else None


def previous_index(store: AnnotationStore, job_id: str, index: int, *, unannotated_only: bool = False) -> int | None:
    """The row before `index` (optionally the previous one not yet annotated); None at the start."""
    if not unannotated_only:
        return index - 1 if index > 0 else None
    r = store.read(f"SELECT MAX(idx) FROM batch_rows WHERE job_id=? AND idx<? AND NOT {LIVE_LINK}",
                   (job_id, index))
    return r[0][0]


def next_unannotated(store: AnnotationStore, job_id: str, index: int = -1) -> int | None:
    """The first row after `index` not yet annotated, wrapping round to the start; None when all are done."""
    after = store.read(f"SELECT MIN(idx) FROM batch_rows WHERE job_id=? AND idx>? AND NOT {LIVE_LINK}",
                       (job_id, index))[0][0]
    if after is not None:
        return after
    return store.read(f"SELECT MIN(idx) FROM batch_rows WHERE job_id=? AND idx<=? AND NOT {LIVE_LINK}",
                      (job_id, index))[0][0]


def annotation_for(job: BatchJob, row: BatchRow, *, annotator: str, **judgement: Any) -> Annotation:
    """An Annotation of a processed row, with provenance from the job's settings (model_id, model_revision,
    family, dtype, decoding, app_version) and the judgement given (rating, corrected_output, …)."""
    if row.output is None:
        raise ValueError(f"row {row.index + 1} has no output yet: run the batch first")
    s = job.settings
    provenance = {k: s[k] for k in ("model_revision", "family", "dtype", "decoding", "app_version") if k in s}
    judgement.setdefault("corrected_output", row.output)
    return Annotation(task=job.task, model_id=s.get("model_id", ""), input=row.input_text, output=row.output,
                      annotator=annotator, **provenance, **judgement)


def annotate_row(store: AnnotationStore, job_id: str, index: int, record: Annotation) -> str:
    """Save `record` and link it to the row, in one transaction; returns the annotation id. A row annotated
    again links the newer annotation (the older one stays in the store)."""
    get_row(store, job_id, index)   # IndexError / KeyError before anything is written
    a = store.prepare(record)
    with store.transaction() as conn:
        insert_annotation(conn, a)
        conn.execute("UPDATE batch_rows SET annotation_id=? WHERE job_id=? AND idx=?", (a.id, job_id, index))
    return a.id


def _job(r) -> BatchJob:
    return BatchJob(r["id"], r["name"], r["task"], json.loads(r["settings"]), r["source"], r["total"],
                    r["created_at"])


def _row(r) -> BatchRow:
    return BatchRow(r["job_id"], r["idx"], r["text"], r["question"], r["context"], r["output"], r["error"],
                    r["processed_at"], r["annotation_id"])
