"""Annotation store: SQLite, one file, lose nothing (or PostgreSQL for a team: app.annotation.backends); export and
import through pandas. The tables and their migrations are app.annotation.schema; the file formats (one JSONL
reader, CSV and Parquet tables, the CSV formula guard) are app.annotation.exchange.

How the UI uses this
====================
One store per process, made at launch (never at import) and passed to the tabs::

    from app.annotation.store import AnnotationStore, Annotation
    store = AnnotationStore()            # path: $MT5_STUDIO_DB (a file, or postgresql://user:pw@host/db), else
                                         # /data/annotations.db on a Space with persistent storage, else
                                         # data/annotations.db under the repo root

Saving from a task tab. The tab supplies the provenance it knows; the store fills id, item_key and the UTC
times. Error categories: `load_error_categories(task)` gives that task's (id, label, help) for a CheckboxGroup
whose values are the ids (no task: every category). Error spans and the ESA / MQM protocols: `app.annotation.spans`
(the store checks the spans against the texts and computes the MQM score). There is no version constant in the
app yet: pass whatever the app defines as `app_version`::

    ann_id = store.save(Annotation(
        task="summarization", model_id="google/mt5-small", model_revision="main", family="mt5",  # or "umt5"
        dtype="bfloat16",  # or "4-bit nf4": free text describing weights as loaded
        decoding={"num_beams": 4, "max_new_tokens": 64},   # the settings used, as plain JSON
        input=text, output=model_output,
        rating=4,  # or None
        corrected_output=edited_text, error_categories=["fluency"],
        comment="", annotator="Amina", app_version=app_version,
        protocol="mqm",            # "esa", "mqm" or "" (categories only)
        spans=[{"start": 0, "end": 4, "side": "output", "category": "accuracy", "severity": "major"}],
        esa_score=None))           # ESA: 0–100; mqm_score is computed from the spans (None unless MQM)
    # ValueError with a message fit to show as-is (gr.Warning) when a field is invalid; nothing is saved.

Editing and deleting from the table (only the judgement fields can change; provenance cannot)::

    store.update(ann_id, rating=5, comment="…", corrected_output="…", error_categories=[…], annotator="…",
                 protocol="esa", spans=[…], esa_score=70)
    store.delete(ann_id)                 # False when it was already gone

A table with filters (dates: `datetime`, `date` or ISO text; a `date` as `until` includes that whole day)::

    df = store.query_frame(task=None, model=None, annotator=None, since=None, until=None,
                           min_rating=None, max_rating=None, limit=500)   # display-ready DataFrame
    records = store.query(...same filters..., limit=None, offset=0)        # list[Annotation]
    n = store.count(...same filters...);  store.stats()                    # StoreStats for a header line
    store.distinct("task" | "model_id" | "annotator")                       # dropdown choices

A download button (CSV, JSONL or Parquet, picked from the suffix or `fmt`)::

    path = store.export(tmp_dir / "annotations.csv", task=…, …)   # same filters as query; returns the path

An upload (a JSONL export, or a CSV/Parquet export; all-or-nothing; ValueError naming the line on a bad file)::

    result = store.import_file(uploaded_path)   # ImportResult(added, updated, skipped); result.message
    # Spans travel as a JSON column in CSV, as a list of {start, end, side, category, severity} in JSONL/Parquet;
    # exports made before spans existed (no protocol/spans/score columns) import as "categories only".

Agreement tables (Krippendorff's alpha on ratings of items judged by two or more annotators)::

    from app.annotation.agreement import agreement_frame
    df = agreement_frame(store.query(), by="task")      # or by="model_id"; one row per group, then "all"

Batch jobs (`app.annotation.batch`), stored in the same database, so they survive a restart::

    inputs = load_inputs(uploaded_path)                  # list[BatchInput]; ValueError on a bad file
    job = create_job(store, inputs, task="summarization", source=filename,
                     settings={"model_id": …, "model_revision": …, "family": …, "dtype": …, "decoding": {…},
                               "app_version": …})
    run_batch(store, job.id, process=lambda row: run_task(row.text),    # row: BatchRow (text/question/context)
              progress=lambda done, total: …, should_stop=None)         # again after a restart: resumes
    pos = queue_position(store, job.id, index)           # pos.row, pos.label ("12 of 200 done"),
                                                         # pos.previous_index / next_index / next_unannotated
    annotate_row(store, job.id, index, annotation_for(job, pos.row, annotator="Amina", rating=4, …))

Hub sync (`app.annotation.sync`), at launch: `sync = start_sync(store)` (None unless MT5_STUDIO_DATASET_REPO and
HF_TOKEN are both set); `sync_status(sync)` is a line for the page.

Text is stored verbatim, `<script>` included: escaping for HTML is the page's job.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .backends import Backend, Dialect, is_database_url, open_backend
from .exchange import export_format, json_field, read_jsonl, read_table, write_csv, write_jsonl
from .protocols import ESA, MQM, Likert
from .schema import MIGRATIONS, TABLES, migrate
from .spans import Protocols, check_scores, check_spans, load_protocols, mqm_score

REPO_ROOT = Path(__file__).resolve().parents[2]
CATEGORIES_PATH = REPO_ROOT / "assets" / "error_categories.json"
ENV_DB = "MT5_STUDIO_DB"
SPACE_DATA_DIR = Path("/data")

FAMILIES = ("mt5", "umt5", "t5")
MAX_COMMENT_BYTES = 64 * 1024
MAX_TEXT_BYTES = 1024 * 1024        # input, output, corrected output: far above what a tab accepts
MAX_SHORT_CHARS = 200               # task, model id, revision, dtype, annotator, app version
MAX_DECODING_BYTES = 16 * 1024


# ---------------------------------------------------------------------------------------------------------------
# Paths and configuration


def default_db_path(environ: dict[str, str] | None = None, space_data_dir: Path = SPACE_DATA_DIR) -> Path | str:
    """Where the database lives: `$MT5_STUDIO_DB` (a file path, or a `postgresql://` URL, returned as text);
    else `/data/annotations.db` when a persistent `/data` exists and is writable (Hugging Face Space persistent
    storage); else `data/annotations.db` in the repo."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_DB):
        value = environ[ENV_DB].strip()
        return value if is_database_url(value) else Path(value).expanduser()
    return default_data_dir(space_data_dir) / "annotations.db"


def default_data_dir(space_data_dir: Path = SPACE_DATA_DIR) -> Path:
    """The folder for files kept on this machine: `/data` on a Space with persistent storage, else `data/`."""
    if space_data_dir.is_dir() and os.access(space_data_dir, os.W_OK):
        return space_data_dir
    return REPO_ROOT / "data"


@dataclass(frozen=True)
class ErrorCategory:
    id: str
    label: str
    help: str = ""


def load_error_categories(task: str | None = None, path: Path = CATEGORIES_PATH) -> list[ErrorCategory]:
    """The error categories offered for `task` (its group in `assets/error_categories.json`), in display order;
    for no task, or a task the file does not list, every category once (first group's wording)."""
    groups = _category_groups(path)
    data_tasks = json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]
    if task in data_tasks:
        return groups[data_tasks[task]]
    seen: dict[str, ErrorCategory] = {}
    for cats in groups.values():
        for c in cats:
            seen.setdefault(c.id, c)
    return list(seen.values())


def categories_by_task(path: Path = CATEGORIES_PATH) -> dict[str, list[str]]:
    """Task -> the category ids allowed for it (what the store checks); tasks not listed allow every id."""
    tasks = json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]
    return {t: [c.id for c in load_error_categories(t, path)] for t in tasks}


def _category_groups(path: Path) -> dict[str, list[ErrorCategory]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    groups = {}
    for name, entries in data["groups"].items():
        cats = [ErrorCategory(c["id"], c.get("label", c["id"]), c.get("help", "")) for c in entries]
        if len({c.id for c in cats}) != len(cats):
            raise ValueError(f"{path}: category ids must be unique within group {name!r}")
        groups[name] = cats
    unknown = sorted(set(data["tasks"].values()) - set(groups))
    if unknown:
        raise ValueError(f"{path}: tasks refer to group(s) {', '.join(unknown)} that are not defined")
    return groups


def utc_now() -> str:
    """Now as canonical UTC text, `2026-01-31T12:00:00.123456Z` (sorts lexically in time order)."""
    return _canonical_time(dt.datetime.now(dt.timezone.utc))


def _canonical_time(t: dt.datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)   # naive times are taken as UTC
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | dt.datetime | dt.date, *, end_of_day: bool = False) -> str:
    """A time filter or timestamp as canonical UTC text. A `date` means the day's start, or with
    `end_of_day` the next day's start (so `until=date` includes that whole day)."""
    if isinstance(value, dt.datetime):
        return _canonical_time(value)
    if isinstance(value, dt.date):
        day = value + dt.timedelta(days=1) if end_of_day else value
        return _canonical_time(dt.datetime(day.year, day.month, day.day))
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:   # a bare date
                return parse_time(dt.date.fromisoformat(text), end_of_day=end_of_day)
            return _canonical_time(dt.datetime.fromisoformat(text))
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a date or time: use ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z")


# ---------------------------------------------------------------------------------------------------------------
# The record


@dataclass(kw_only=True)
class Annotation:
    """One judgement of one model output by one annotator, with the output's full provenance.

    `decoding` is the generation settings as a JSON object; `error_categories` are ids from
    `assets/error_categories.json`; times are canonical UTC text (see `utc_now`). `item_key` groups
    judgements of the same (task, model, input, output) by several annotators, for agreement.

    `protocol` is "esa", "mqm" or "" (categories only); `spans` are error spans, {start, end, side, category,
    severity} with Python character offsets into `output` or `input` (see app.annotation.spans); `esa_score` is
    the ESA 0–100 score, `mqm_score` the MQM penalty computed from the spans (None unless MQM). The database holds
    the three scores in one `scores` JSON column under their protocol ids (`SCORES`); exports keep the three fields.

    `owner` is the signed-in account that saved it ("" in open use, where nobody signs in): on a protected
    deployment only the owner and admins may change or delete it (app.annotation.rights)."""
    task: str
    model_id: str
    input: str
    output: str
    annotator: str
    model_revision: str = ""
    family: str = "mt5"
    dtype: str = ""
    decoding: dict[str, Any] = field(default_factory=dict)
    rating: int | None = None
    corrected_output: str = ""
    error_categories: list[str] = field(default_factory=list)
    comment: str = ""
    app_version: str = ""
    owner: str = ""
    protocol: str = ""
    spans: list[dict[str, Any]] = field(default_factory=list)
    esa_score: int | None = None
    mqm_score: float | None = None
    id: str = ""
    item_key: str = ""
    created_at: str = ""
    updated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any], *, where: str = "") -> Annotation:
        """Build from an exported row, checking every field's presence and type (ValueError naming `where`)."""
        prefix = f"{where}: " if where else ""
        if not isinstance(row, dict):
            raise ValueError(f"{prefix}expected a JSON object, got {type(row).__name__}")
        row = {**{k: v for k, v in OPTIONAL_FIELDS.items() if k not in row}, **row}   # exports before spans
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{prefix}missing field(s) {', '.join(missing)}: an export has all of {', '.join(FIELDS)}")
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise ValueError(f"{prefix}unknown field(s) {', '.join(unknown)}")
        for name in FIELDS:
            kind = _FIELD_TYPES[name]
            value = row[name]
            if kind is int:
                ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
            elif kind is float:
                ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
            else:
                ok = isinstance(value, kind)
            if not ok:
                words = _TYPE_WORDS.get(name, _TYPE_WORDS[kind])
                raise ValueError(f"{prefix}field `{name}` must be {words}, got {_shown(value)}")
        values = {name: row[name] for name in FIELDS}
        if values["mqm_score"] is not None:
            values["mqm_score"] = float(values["mqm_score"])
        return cls(**values)


FIELDS = tuple(f.name for f in dataclasses.fields(Annotation))
_FIELD_TYPES = {f: str for f in FIELDS} | {"decoding": dict, "rating": int, "error_categories": list,
                                           "spans": list, "esa_score": int, "mqm_score": float}
_TYPE_WORDS = {str: "text", dict: "a JSON object", int: "an integer 1–5 or null", list: "a list of category ids",
               float: "a number or null", "spans": "a list of {start, end, side, category, severity} objects",
               "esa_score": "an integer 0–100 or null",
               "created_at": "text (an ISO 8601 time)", "updated_at": "text (an ISO 8601 time)"}
# Fields added after the first exports were made: a file without them imports with these values.
OPTIONAL_FIELDS = {"protocol": "", "spans": [], "esa_score": None, "mqm_score": None, "owner": ""}
EDITABLE = ("rating", "corrected_output", "error_categories", "comment", "annotator", "protocol", "spans",
            "esa_score")
# Column order of exports and tables: who/what first, provenance after.
EXPORT_COLUMNS = ("id", "item_key", "task", "model_id", "model_revision", "family", "dtype", "decoding", "input",
                  "output", "rating", "corrected_output", "error_categories", "protocol", "spans", "esa_score",
                  "mqm_score", "comment", "annotator", "owner", "created_at", "updated_at", "app_version")
assert sorted(EXPORT_COLUMNS) == sorted(FIELDS)
# The scores a record holds, by field, and the protocol id each is stored under in the `scores` JSON column (v8).
SCORES = {"rating": Likert.id, "esa_score": ESA.id, "mqm_score": MQM.id}


def item_key(task: str, model_id: str, input: str, output: str) -> str:
    """Stable key of the judged item: the same output of the same model for the same input and task."""
    blob = json.dumps([task, model_id, input, output], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def span_texts(a: Annotation) -> dict[str, str]:
    """The texts an annotation's spans may mark, by side. (A comparison record would add "A" and "B".)"""
    return {"output": a.output, "input": a.input}


class _Validator:
    """Boundary checks with messages fit to show to the annotator.

    `categories`: the ids allowed for every task, or task -> ids (a task not in it allows `fallback`)."""

    def __init__(self, categories: Sequence[str] | Mapping[str, Sequence[str]],
                 fallback: Sequence[str] = (), protocols: Protocols | None = None):
        if isinstance(categories, Mapping):
            self.by_task = {t: tuple(c) for t, c in categories.items()}
            self.categories = tuple(fallback)
        else:
            self.by_task, self.categories = {}, tuple(categories)
        self.protocols = protocols or load_protocols()

    def allowed(self, task: str) -> tuple[str, ...]:
        return self.by_task.get(task, self.categories)

    def spans(self, a: Annotation) -> list[dict[str, Any]]:
        """`a.spans` checked against its texts and protocol, normalised and sorted (ValueError otherwise)."""
        protocol = a.protocol if isinstance(a.protocol, str) else repr(a.protocol)
        spans = check_spans(a.spans, span_texts(a), protocol, self.allowed(a.task), self.protocols)
        check_scores(protocol, spans, a.esa_score, a.mqm_score, self.protocols)
        return spans

    def check(self, a: Annotation) -> None:
        for name in ("task", "model_id"):
            if not getattr(a, name).strip():
                raise ValueError(f"`{name}` is empty: the tab must say which {name.replace('_', ' ')} made the output")
        if not a.annotator.strip():
            raise ValueError("annotator name is empty: type your name so judgements can be told apart")
        for name in ("task", "model_id", "model_revision", "dtype", "annotator", "owner", "app_version"):
            if len(getattr(a, name)) > MAX_SHORT_CHARS:
                raise ValueError(f"`{name}` is longer than {MAX_SHORT_CHARS} characters")
        if a.family not in FAMILIES:
            raise ValueError(f"family {a.family!r} is not one of {', '.join(FAMILIES)}")
        self.check_rating(a.rating)
        self.check_categories(a.error_categories, a.task)
        self.check_comment(a.comment)
        for name in ("input", "output", "corrected_output"):
            size = len(getattr(a, name).encode("utf-8"))
            if size > MAX_TEXT_BYTES:
                raise ValueError(f"`{name}` is {size:,} bytes; the limit is {MAX_TEXT_BYTES:,} bytes")
        try:
            blob = json.dumps(a.decoding, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"decoding settings are not plain JSON (numbers, text, lists): {e}") from None
        if len(blob.encode("utf-8")) > MAX_DECODING_BYTES:
            raise ValueError(f"decoding settings are over {MAX_DECODING_BYTES:,} bytes as JSON")
        self.spans(a)

    @staticmethod
    def check_rating(rating: Any) -> None:
        if rating is None:
            return
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise ValueError(f"rating must be a whole number from 1 to 5, or empty; got {rating!r}")

    def check_categories(self, cats: Any, task: str = "") -> None:
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ValueError(f"error categories must be a list of category ids, got {cats!r}")
        allowed = self.allowed(task)
        unknown = [c for c in cats if c not in allowed]
        if unknown:
            which = f"categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}"
            scope = f" for {task}" if task in self.by_task else ""
            raise ValueError(f"unknown error {which}{scope}: "
                             f"known ones are {', '.join(allowed)} (assets/error_categories.json)")
        if len(set(cats)) != len(cats):
            raise ValueError(f"error categories repeat an entry: {cats}")

    @staticmethod
    def check_comment(comment: Any) -> None:
        if not isinstance(comment, str):
            raise ValueError("comment must be text")
        size = len(comment.encode("utf-8"))
        if size > MAX_COMMENT_BYTES:
            raise ValueError(f"comment is {size:,} bytes; the limit is {MAX_COMMENT_BYTES:,} bytes (64 KB): "
                             "shorten it and keep long notes elsewhere")


# ---------------------------------------------------------------------------------------------------------------
# The store

_NO_LIMIT = 2**63 - 1   # LIMIT for "no limit" in both dialects (SQLite's -1 is an error in PostgreSQL)


@dataclass(frozen=True)
class StoreStats:
    total: int
    annotators: int
    items: int
    items_with_two_or_more: int
    by_task: dict[str, int]
    by_model: dict[str, int]


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    skipped: int

    @property
    def message(self) -> str:
        return f"imported {self.added} new, updated {self.updated}, skipped {self.skipped} already present"


class AnnotationStore:
    """Annotations in one SQLite file (WAL mode), or in a PostgreSQL database (`postgresql://` URL) that several
    app instances share; safe to share between threads.

    SQLite: every thread gets its own connection (readers never wait for writers in WAL mode). PostgreSQL: a
    small pool of connections; a lost one is replaced. On both, writes go through one lock and one write
    transaction each (`BEGIN IMMEDIATE`; on PostgreSQL, BEGIN plus an advisory lock that every process takes),
    so a save is all-or-nothing and survives a killed process. A write that cannot reach the database raises
    DatabaseUnavailable; nothing is dropped silently."""

    def __init__(self, path: str | Path | None = None, *, categories: Sequence[str] | None = None,
                 local_dir: Path | None = None):
        location = path if path is not None else default_db_path()
        if isinstance(location, str) and not is_database_url(location):
            location = Path(location)
        self._backend: Backend = open_backend(location)   # ValueError for a malformed URL; DatabaseUnavailable
        # The SQLite file, or None on PostgreSQL; `location` names either (a URL without its password).
        self.path: Path | None = getattr(self._backend, "path", None)
        self.location: str = self._backend.location
        self.dialect: Dialect = self._backend.dialect
        self._local_dir = Path(local_dir) if local_dir is not None else None
        if categories is None:
            self.validator = _Validator(categories_by_task(), [c.id for c in load_error_categories()])
        else:
            self.validator = _Validator(list(categories))
        self._write_lock = threading.RLock()
        with self._write_lock, self._backend.connection() as conn:
            migrate(conn, MIGRATIONS, self.dialect)

    @property
    def local_dir(self) -> Path:
        """The folder for this store's files on this machine (the Hub sync's upload folder): the SQLite file's
        folder; for PostgreSQL, /data on a Space with persistent storage, else data/ in the repo; or the
        `local_dir` given."""
        if self._local_dir is not None:
            return self._local_dir
        return self.path.parent if self.path is not None else default_data_dir()

    # -- connections and transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction: committed when the block ends, rolled back if it raises. The connection's
        `execute(sql, params)` takes `?` placeholders on either backend."""
        with self._write_lock, self._backend.write() as conn:
            yield conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query (inside a `transaction()`, on its connection); each row reads by index and name."""
        return self._backend.read(sql, params)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._backend.connection() as conn:
            return self.dialect.version(conn)

    def integrity_check(self) -> str:
        """"ok" for a sound database: SQLite's `PRAGMA integrity_check`; on PostgreSQL (which checks its own
        pages), every table of the schema present."""
        return self._backend.integrity_check(TABLES)

    # -- single records

    def save(self, record: Annotation) -> str:
        """Validate and store a new annotation in one transaction; returns its id.

        Fills `id` (a UUID), `item_key`, `created_at` and `updated_at` when empty. Raises ValueError, saving
        nothing, when a field is invalid or the id exists."""
        a = self.prepare(record)
        with self.transaction() as conn:
            try:
                insert_annotation(conn, a)
            except sqlite3.IntegrityError:
                raise ValueError(f"an annotation with id {a.id} already exists: use update()") from None
        return a.id

    def prepare(self, record: Annotation) -> Annotation:
        """A validated copy of `record` with id, item_key and timestamps filled, ready for `insert_annotation`
        inside a `transaction()` (for callers that write more in the same transaction, like app.annotation.batch)."""
        self.validator.check(record)
        now = utc_now()
        a = dataclasses.replace(record, annotator=record.annotator.strip(),
                                error_categories=list(record.error_categories), decoding=dict(record.decoding))
        self._fill_spans(a)
        a.id = a.id or uuid.uuid4().hex
        a.item_key = item_key(a.task, a.model_id, a.input, a.output)
        a.created_at = parse_time(a.created_at) if a.created_at else now
        a.updated_at = parse_time(a.updated_at) if a.updated_at else a.created_at
        return a

    def _fill_spans(self, a: Annotation) -> None:
        """Spans normalised and sorted; the MQM score computed from them (None for another protocol)."""
        a.spans = self.validator.spans(a)
        a.mqm_score = mqm_score(a.spans, self.validator.protocols) if a.protocol == "mqm" else None

    def update(self, ann_id: str, *, by: str = "", **changes: Any) -> Annotation:
        """Change the judgement fields (rating, corrected_output, error_categories, comment, annotator, protocol,
        spans, esa_score) of one annotation; stamps `updated_at` and recomputes the MQM score. The record as it
        was is kept in its history first (`history`), with `by` (who changed it). Returns the updated record.
        KeyError if no such id (or it was deleted)."""
        bad = sorted(set(changes) - set(EDITABLE))
        if bad:
            raise ValueError(f"cannot change {', '.join(bad)}: only {', '.join(EDITABLE)} are editable "
                             "(the provenance of an output is fixed)")
        with self.transaction() as conn:
            current = self.get(ann_id)
            if current is None:
                raise KeyError(f"no annotation with id {ann_id!r}")
            new = dataclasses.replace(current, **changes)
            if "mqm_score" not in changes:
                new.mqm_score = None     # recomputed from the (new) spans
            self.validator.check(new)
            self._fill_spans(new)
            new.annotator = new.annotator.strip()
            new.updated_at = utc_now()
            _keep_version(conn, current, "edit", by)
            conn.execute("UPDATE annotations SET scores=?, corrected_output=?, error_categories=?, comment=?, "
                         "annotator=?, protocol=?, spans=?, updated_at=? WHERE id=?",
                         (_scores_json(new), new.corrected_output,
                          json.dumps(new.error_categories, ensure_ascii=False), new.comment, new.annotator,
                          new.protocol, json.dumps(new.spans, ensure_ascii=False), new.updated_at, ann_id))
        return new

    def delete(self, ann_id: str, *, by: str = "") -> bool:
        """Delete one annotation, softly: it leaves every query, table, export and agreement figure, but its row
        stays (with who deleted it and when) until `restore` brings it back. False when there was no live
        annotation with that id."""
        with self.transaction() as conn:
            current = self.get(ann_id)
            if current is None:
                return False
            _keep_version(conn, current, "delete", by)
            conn.execute("UPDATE annotations SET deleted_at=?, deleted_by=? WHERE id=? AND deleted_at IS NULL",
                         (utc_now(), by, ann_id))
            return True

    def restore(self, ann_id: str, *, by: str = "") -> Annotation:
        """Bring back a deleted annotation as it was. KeyError when there is no such id, ValueError when it is
        not deleted."""
        with self.transaction() as conn:
            current = self.get(ann_id, include_deleted=True)
            if current is None:
                raise KeyError(f"no annotation with id {ann_id!r}")
            if self.deleted_info(ann_id) is None:
                raise ValueError(f"annotation {ann_id[:8]} is not deleted: there is nothing to restore")
            _keep_version(conn, current, "restore", by)
            conn.execute("UPDATE annotations SET deleted_at=NULL, deleted_by='' WHERE id=?", (ann_id,))
        return current

    def deleted_info(self, ann_id: str) -> tuple[str, str] | None:
        """(deleted_at, deleted_by) of a deleted annotation; None for a live one or an unknown id."""
        rows = self.read("SELECT deleted_at, deleted_by FROM annotations WHERE id=? AND deleted_at IS NOT NULL",
                         (ann_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def get(self, ann_id: str, *, include_deleted: bool = False) -> Annotation | None:
        """The annotation with this id; None when there is none, or it was deleted (unless `include_deleted`)."""
        live = "" if include_deleted else " AND deleted_at IS NULL"
        rows = self.read(f"SELECT * FROM annotations WHERE id=?{live}", (ann_id,))
        return _from_row(rows[0]) if rows else None

    def history(self, ann_id: str) -> list[Version]:
        """Every earlier state of an annotation, oldest first: what it was before each edit, delete, restore or
        import over it, with who did that and when (the current state is `get`)."""
        rows = self.read("SELECT * FROM annotation_versions WHERE annotation_id=? ORDER BY version", (ann_id,))
        return [Version(r["version"], r["action"], Annotation(**_decode(json.loads(r["record"]))),
                        r["replaced_at"], r["replaced_by"]) for r in rows]

    # -- many records

    def query(self, *, task: str | None = None, model: str | None = None, annotator: str | None = None,
              since: str | dt.datetime | dt.date | None = None, until: str | dt.datetime | dt.date | None = None,
              min_rating: int | None = None, max_rating: int | None = None, item_key: str | None = None,
              owner: str | None = None, deleted: bool = False,
              limit: int | None = None, offset: int = 0) -> list[Annotation]:
        """Annotations matching every given filter, oldest first. `since` is inclusive; `until` is inclusive
        for a time and includes the whole day for a date. A rating filter leaves out unrated annotations.
        `owner`: only that account's (`""` is a filter too: open-use annotations). `deleted`: the deleted ones
        instead of the live ones."""
        where, params = _filters(self.dialect, task, model, annotator, since, until, min_rating, max_rating,
                                 item_key, owner, deleted)
        sql = f"SELECT * FROM annotations{where} ORDER BY created_at, id"
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params += [_NO_LIMIT if limit is None else int(limit), int(offset)]
        return [_from_row(r) for r in self.read(sql, params)]

    def count(self, *, task: str | None = None, model: str | None = None, annotator: str | None = None,
              since: str | dt.datetime | dt.date | None = None, until: str | dt.datetime | dt.date | None = None,
              min_rating: int | None = None, max_rating: int | None = None, item_key: str | None = None,
              owner: str | None = None, deleted: bool = False) -> int:
        where, params = _filters(self.dialect, task, model, annotator, since, until, min_rating, max_rating,
                                 item_key, owner, deleted)
        return self.read(f"SELECT COUNT(*) FROM annotations{where}", params)[0][0]

    def stats(self) -> StoreStats:
        live = "FROM annotations WHERE deleted_at IS NULL"
        one = self.read(f"SELECT COUNT(*), COUNT(DISTINCT annotator), COUNT(DISTINCT item_key) {live}")[0]
        multi = self.read(f"SELECT COUNT(*) FROM (SELECT item_key {live} GROUP BY item_key "
                          "HAVING COUNT(DISTINCT annotator) >= 2) AS multi")[0][0]
        by = {col: dict(self.read(f"SELECT {col}, COUNT(*) {live} GROUP BY {col} ORDER BY {col}"))
              for col in ("task", "model_id")}
        return StoreStats(one[0], one[1], one[2], multi, by["task"], by["model_id"])

    def distinct(self, column: str, *, owner: str | None = None) -> list[str]:
        """Values present in `task`, `model_id` or `annotator` (of `owner`'s annotations only, when given),
        sorted: choices for the filter dropdowns."""
        if column not in ("task", "model_id", "annotator", "family", "dtype"):
            raise ValueError(f"no filter choices for column {column!r}")
        where, params = _filters(self.dialect, None, None, None, None, None, None, None, None, owner)
        return [r[0] for r in self.read(f"SELECT DISTINCT {column} FROM annotations{where} ORDER BY {column}",
                                        params)]

    def query_frame(self, **filters: Any) -> pd.DataFrame:
        """`query(**filters)` as a display-ready DataFrame: categories joined by ", ", decoding and spans as
        JSON text."""
        df = records_to_frame(self.query(**filters))
        df["error_categories"] = df["error_categories"].map(", ".join)
        df["decoding"] = df["decoding"].map(lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True))
        df["spans"] = df["spans"].map(lambda s: json.dumps(s, ensure_ascii=False))
        return df

    # -- export and import

    def export(self, path: str | Path, fmt: str | None = None, **filters: Any) -> Path:
        """Write `query(**filters)` to `path` as CSV, JSONL or Parquet (from `fmt`, else the suffix)."""
        return export_annotations(self.query(**filters), path, fmt)

    def import_file(self, path: str | Path, *, update_newer: bool = True, by: str = "") -> ImportResult:
        """Import an export file (JSONL; CSV and Parquet exports too), all or nothing.

        Every row is checked before anything is written; the first problem raises ValueError naming its line
        (JSONL) or row (CSV/Parquet) and the database is unchanged. Ids already in the database: the incoming
        row replaces the stored one when its `updated_at` is later (an edit made elsewhere) and
        `update_newer` is true; otherwise it is skipped. Timestamps and ids are kept as in the file."""
        records = read_export(path)
        if not records:
            raise ValueError(f"{Path(path).name} has no annotations in it (an empty file?)")
        seen: dict[str, str] = {}
        for where, a in records:
            try:
                self.validator.check(a)
            except ValueError as e:
                raise ValueError(f"{where}: {e}; nothing was imported") from None
            if a.id in seen:
                raise ValueError(f"{where}: id {a.id} appears twice in the file (first at {seen[a.id]})")
            seen[a.id] = where
            self._fill_spans(a)
            if not a.id.strip():
                raise ValueError(f"{where}: `id` is empty")
            if a.item_key != item_key(a.task, a.model_id, a.input, a.output):
                raise ValueError(f"{where}: `item_key` does not match task, model, input and output: the row was "
                                 "edited after export, or comes from another tool")
            for name in ("created_at", "updated_at"):
                try:
                    setattr(a, name, parse_time(getattr(a, name)))
                except ValueError as e:
                    raise ValueError(f"{where}: `{name}`: {e}") from None
        added = updated = skipped = 0
        with self.transaction() as conn:
            for _, a in records:
                row = conn.execute("SELECT * FROM annotations WHERE id=?", (a.id,)).fetchone()
                if row is None:
                    insert_annotation(conn, a)
                    added += 1
                elif update_newer and a.updated_at > row["updated_at"]:
                    # the newer copy replaces the stored one; the stored one goes into its history, and a
                    # deletion made here stays (an admin restores it)
                    _keep_version(conn, _from_row(row), "import", by)
                    conn.execute("DELETE FROM annotations WHERE id=?", (a.id,))
                    insert_annotation(conn, a)
                    conn.execute("UPDATE annotations SET deleted_at=?, deleted_by=? WHERE id=?",
                                 (row["deleted_at"], row["deleted_by"], a.id))
                    updated += 1
                else:
                    skipped += 1
        return ImportResult(added, updated, skipped)


def insert_annotation(conn: sqlite3.Connection, a: Annotation) -> None:
    """INSERT one prepared annotation; inside `AnnotationStore.transaction()`."""
    values = _to_row(a)
    conn.execute(f"INSERT INTO annotations ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                 list(values.values()))


@dataclass(frozen=True)
class Version:
    """An earlier state of an annotation: `record` as it was before `action` ("edit", "delete", "restore" or
    "import") by `replaced_by` at `replaced_at`."""
    version: int
    action: str
    record: Annotation
    replaced_at: str
    replaced_by: str


def _keep_version(conn: sqlite3.Connection, a: Annotation, action: str, by: str) -> None:
    """Copy `a` (the stored state) into annotation_versions before it changes; inside the change's transaction."""
    n = conn.execute("SELECT COALESCE(MAX(version), 0) FROM annotation_versions WHERE annotation_id=?",
                     (a.id,)).fetchone()[0]
    conn.execute("INSERT INTO annotation_versions (annotation_id, version, action, record, replaced_at, replaced_by)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (a.id, n + 1, action, json.dumps(a.to_dict(), ensure_ascii=False), utc_now(), by))


def _to_row(a: Annotation) -> dict[str, Any]:
    row = {k: v for k, v in a.to_dict().items() if k not in SCORES}
    row["decoding"] = json.dumps(a.decoding, ensure_ascii=False)
    row["error_categories"] = json.dumps(a.error_categories, ensure_ascii=False)
    row["spans"] = json.dumps(a.spans, ensure_ascii=False)
    row["scores"] = _scores_json(a)
    return row


def _scores_json(a: Annotation) -> str:
    """The `scores` column: the record's scores that are set, under their protocol ids."""
    return json.dumps({key: getattr(a, name) for name, key in SCORES.items() if getattr(a, name) is not None})


def _from_row(row: sqlite3.Row) -> Annotation:
    d = {k: row[k] for k in FIELDS if k not in SCORES}
    for name in ("decoding", "error_categories", "spans"):
        d[name] = json.loads(d[name])
    scores = json.loads(row["scores"])
    d.update({name: scores.get(key) for name, key in SCORES.items()})
    if d["mqm_score"] is not None:
        d["mqm_score"] = float(d["mqm_score"])     # 5 (as PostgreSQL printed 5.0 when v8 copied it) is 5.0
    return Annotation(**d)


def _decode(d: dict[str, Any]) -> dict[str, Any]:
    """A history record (Annotation.to_dict as JSON) with fields added later filled in."""
    return {**{k: v for k, v in OPTIONAL_FIELDS.items() if k not in d}, **{k: d[k] for k in FIELDS if k in d}}


def _filters(dialect: Dialect, task, model, annotator, since, until, min_rating, max_rating, key, owner=None,
             deleted=False) -> tuple[str, list[Any]]:
    clauses, params = ["deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"], []
    if owner is not None:
        clauses.append("owner = ?")
        params.append(owner)
    for column, value in (("task", task), ("model_id", model), ("annotator", annotator), ("item_key", key)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since:
        clauses.append("created_at >= ?")
        params.append(parse_time(since))
    if until:
        whole_day = (isinstance(until, dt.date) and not isinstance(until, dt.datetime)) or \
            (isinstance(until, str) and len(until.strip()) == 10)
        if whole_day:
            clauses.append("created_at < ?")
            params.append(parse_time(until, end_of_day=True))
        else:
            clauses.append("created_at <= ?")
            params.append(parse_time(until))
    for op, value in ((">=", min_rating), ("<=", max_rating)):
        if value is not None:
            clauses.append(f"{dialect.json_number('scores', SCORES['rating'])} {op} ?")
            params.append(int(value))
    return " WHERE " + " AND ".join(clauses), params


# ---------------------------------------------------------------------------------------------------------------
# Annotations as files (the formats themselves: app.annotation.exchange)


def records_to_frame(records: Sequence[Annotation]) -> pd.DataFrame:
    """Annotations as a DataFrame in export column order; `decoding` dicts and category lists kept as objects,
    `rating` and `esa_score` as nullable Int64, `mqm_score` as nullable Float64."""
    df = pd.DataFrame([a.to_dict() for a in records], columns=list(EXPORT_COLUMNS))
    df["rating"] = df["rating"].astype("Int64")
    df["esa_score"] = df["esa_score"].astype("Int64")
    df["mqm_score"] = df["mqm_score"].astype("Float64")
    return df


def export_annotations(records: Sequence[Annotation], path: str | Path, fmt: str | None = None) -> Path:
    """Write annotations to `path` as csv, jsonl or parquet (from `fmt`, else the file suffix). Returns `path`."""
    path = Path(path)
    fmt = export_format(path, fmt)
    if fmt == "jsonl":
        return write_jsonl(({c: getattr(a, c) for c in EXPORT_COLUMNS} for a in records), path)
    df = records_to_frame(records)
    if fmt == "csv":
        for col in ("decoding", "error_categories", "spans"):
            df[col] = df[col].map(lambda v: json.dumps(v, ensure_ascii=False))
        # Scores as exact text: repr of a float reads back as the same float.
        df["esa_score"] = [str(a.esa_score) if a.esa_score is not None else "" for a in records]
        df["mqm_score"] = [repr(a.mqm_score) if a.mqm_score is not None else "" for a in records]
        return write_csv(df, path, guard=[c for c in EXPORT_COLUMNS if c not in ("rating", "esa_score", "mqm_score")])
    df["decoding"] = df["decoding"].map(lambda v: json.dumps(v, ensure_ascii=False))
    df.to_parquet(path, index=False)
    return path


def read_export(path: str | Path) -> list[tuple[str, Annotation]]:
    """Read an export file back as (where, Annotation) pairs, `where` being "line N" or "row N" for messages.
    Types and fields are checked; values (categories, ratings) are checked by the store on import."""
    path = Path(path)
    fmt = export_format(path, None)
    if fmt == "jsonl":
        try:
            return [(where, Annotation.from_dict(row, where=where)) for where, row in read_jsonl(path)]
        except ValueError as e:
            raise ValueError(f"{e}; nothing was imported") from None
    return [(where, Annotation.from_dict(_row_from_table(row, fmt, where), where=where))
            for where, row in read_table(path, fmt)]


def _row_from_table(row: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    """A CSV or Parquet row (as `read_table` gives it) with the types of an Annotation field."""
    row = dict(row)
    if fmt == "csv":
        rating = row.get("rating", "")
        try:
            row["rating"] = int(rating) if rating != "" else None
        except ValueError:
            raise ValueError(f"{where}: rating must be a whole number 1–5 or empty, got {rating!r}") from None
        for name in ("error_categories", "spans"):
            if name in row:
                row[name] = json_field(row[name], name, where)
        for name, kind in (("esa_score", int), ("mqm_score", float)):
            text = row.get(name, "")
            try:
                row[name] = kind(text) if text != "" else None
            except ValueError:
                raise ValueError(f"{where}: field `{name}` must be a number or empty, got {text!r}") from None
    else:
        # Parquet's numbers come back as Python ones (read_table); a missing one is NaN or NA: None here, and
        # nothing else changes, so a wrong type is refused by the type check.
        row["rating"] = _whole(row.get("rating"), "rating", "1–5", where)
        if "esa_score" in row:
            row["esa_score"] = _whole(row["esa_score"], "esa_score", "0–100", where)
        mqm = row.get("mqm_score")
        if mqm is pd.NA or (isinstance(mqm, float) and mqm != mqm):
            row["mqm_score"] = None
    if "decoding" in row:
        row["decoding"] = json_field(row["decoding"], "decoding", where)
    return row


def _shown(value: Any) -> str:
    """A short description of a wrong value for a message; never raises (timestamps, numpy, deep nesting)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = f"{type(value).__name__} {str(value)!r}"
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value: Any, name: str, words: str, where: str) -> Any:
    """A missing number as None, an integral float as the same int; a fraction is refused, other types left
    for the type check to refuse."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{where}: {name} must be a whole number {words}, got {value!r}")
        return int(value)
    return value
