"""Side-by-side comparisons: two systems' outputs for the same input, judged blind as A and B.

A *system* is a checkpoint with the settings it ran under (revision, dtype, decoding). The annotator sees the two
outputs as A and B in an order drawn at random for each item, marks error spans on either side (and on the input,
for omissions), picks a preference and saves; only then is it revealed which system was A. The record keeps the
outputs as they were shown (A, B) with each side's provenance, so nothing about the display is lost::

    from app.annotation.comparisons import Comparison, System, save_comparison
    cmp_id = save_comparison(store, Comparison(
        task="summarization", input=text,
        system_a=System("google/mt5-small", decoding={"num_beams": 4}), output_a=out_1,
        system_b=System("google/mt5-small", decoding={"do_sample": True, "seed": 0}), output_b=out_2,
        preference="A",            # "A", "B", "tie" (both as good) or "both_bad"
        protocol="esa", spans=[{"start": 0, "end": 4, "side": "B", "category": "", "severity": "major"}],
        comment="", annotator="Amina"), owner="")          # owner: the signed-in account, "" in open use
    delete_comparison(store, cmp_id, by="Amina")           # soft: the row stays, with deleted_at / deleted_by
    comparison_history(store, cmp_id)    # earlier states: before each edit, delete, restore or import over it

Spans are those of app.annotation.spans with sides "A", "B" and "input" and the same rules. A comparison of a
system with itself (same checkpoint, revision, dtype and, for a task that decodes, decoding settings) is refused.
Export and import (CSV, JSONL, Parquet) follow the annotation files: flat columns, spans a JSON column in CSV
and a list of {start, end, side, category, severity} in JSONL and Parquet, all or nothing on import. As with
annotations, every change keeps the state before it (`comparison_versions`: who, when, which action), and an import
never brings back a comparison deleted here (an admin restores it).

Compare jobs (a file of inputs through both systems, then a blind queue) live in `comparison_jobs` and
`comparison_job_rows`; the A/B order of each row is drawn when the job is made, so it stays put between visits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..prompts import qa_prompt
from ..tasklist import TASKS
from .spans import check_spans, stored_protocol
from .exchange import export_format, read_jsonl, read_table, write_csv, write_jsonl
from .store import FAMILIES, MAX_SHORT_CHARS, MAX_TEXT_BYTES, AnnotationStore, ImportResult, parse_time, utc_now

PREFERENCES = ("A", "B", "tie", "both_bad")
PREFERENCE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie (equally good)", "both_bad": "Both bad"}
SIDES = ("A", "B")


@dataclass(frozen=True)
class System:
    """What produced one side: a checkpoint and the settings it ran under."""
    model_id: str
    model_revision: str = ""
    family: str = "mt5"
    dtype: str = ""
    decoding: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity of the system for win rates and agreement (its settings as canonical JSON)."""
        return json.dumps([self.model_id, self.model_revision, self.dtype, self.decoding], sort_keys=True,
                          ensure_ascii=False)


@dataclass(kw_only=True)
class Comparison:
    """One blind pairwise judgement. `output_a` / `output_b` are the outputs as shown; `system_a` / `system_b`
    what made them. `preference` is "A", "B", "tie" or "both_bad"; spans mark sides "A", "B" or "input"."""
    task: str
    input: str
    system_a: System
    output_a: str
    system_b: System
    output_b: str
    preference: str
    annotator: str
    protocol: str = "esa"
    spans: list[dict[str, Any]] = field(default_factory=list)
    comment: str = ""
    app_version: str = ""
    owner: str = ""
    id: str = ""
    item_key: str = ""
    created_at: str = ""
    updated_at: str = ""

    def system(self, side: str) -> System:
        return self.system_a if side == "A" else self.system_b

    def winner(self) -> System | None:
        """The preferred system, None for a tie or both bad."""
        return self.system(self.preference) if self.preference in SIDES else None


# Export columns: one flat row per comparison (a system is five columns per side).
SYSTEM_FIELDS = ("model_id", "model_revision", "family", "dtype", "decoding")
COLUMNS = ("id", "item_key", "task", "input",
           *(f"{f}_a" for f in SYSTEM_FIELDS), "output_a", *(f"{f}_b" for f in SYSTEM_FIELDS), "output_b",
           "preference", "protocol", "spans", "comment", "annotator", "owner", "created_at", "updated_at",
           "app_version")
_DICT_COLUMNS = ("decoding_a", "decoding_b")


def comparison_key(task: str, input: str, pairs: Sequence[tuple[System, str]]) -> str:
    """The judged item, whatever the order shown: the task, the input and the two (system, output) pairs."""
    sides = sorted([p[0].key, p[1]] for p in pairs)
    blob = json.dumps([task, input, sides], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def task_decodes(task: str) -> bool:
    """Whether the task's output depends on decoding settings (a task not in the table is taken to)."""
    return TASKS[task].decodes if task in TASKS else True


def same_system(a: System, b: System, decodes: bool = True) -> bool:
    """Whether two systems would give the same output: same checkpoint, revision and dtype, and (for a task that
    decodes) the same decoding settings."""
    return (a.model_id, a.model_revision, a.dtype) == (b.model_id, b.model_revision, b.dtype) and \
        (not decodes or a.decoding == b.decoding)


def identical_message(a: System) -> str:
    return (f"A and B are the same system ({a.model_id} with the same settings): a model compared with itself "
            "under identical settings tells nothing. Pick another checkpoint, or change a decoding setting, for "
            "one side.")


# ---------------------------------------------------------------------------------------------------------------
# Validation


def check(store: AnnotationStore, c: Comparison) -> list[dict[str, Any]]:
    """Every field of `c` checked (ValueError fit to show as-is); returns its spans normalised and sorted."""
    v = store.validator
    if not c.task.strip():
        raise ValueError("`task` is empty: say which task the two outputs are for")
    for side in SIDES:
        s = c.system(side)
        if not isinstance(s, System):
            raise ValueError(f"system {side} must be a System, got {type(s).__name__}")
        if not s.model_id.strip():
            raise ValueError(f"the model of side {side} is empty: say which checkpoint made output {side}")
        if s.family not in FAMILIES:
            raise ValueError(f"family of side {side} {s.family!r} is not one of {', '.join(FAMILIES)}")
        for name in ("model_id", "model_revision", "dtype"):
            if not isinstance(getattr(s, name), str) or len(getattr(s, name)) > MAX_SHORT_CHARS:
                raise ValueError(f"`{name}` of side {side} must be text of at most {MAX_SHORT_CHARS} characters")
        if not isinstance(s.decoding, dict):
            raise ValueError(f"decoding of side {side} must be a JSON object")
        try:
            json.dumps(s.decoding, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"decoding of side {side} is not plain JSON: {e}") from None
    if same_system(c.system_a, c.system_b, task_decodes(c.task)):
        raise ValueError(identical_message(c.system_a))
    if c.preference not in PREFERENCES:
        raise ValueError(f"preference {c.preference!r} is not one of {', '.join(PREFERENCES)} (A better, B better, "
                         "tie, both bad)")
    if not isinstance(c.annotator, str) or not c.annotator.strip():
        raise ValueError("annotator name is empty: type your name so judgements can be told apart")
    for name in ("task", "annotator", "app_version", "owner"):
        if len(getattr(c, name)) > MAX_SHORT_CHARS:
            raise ValueError(f"`{name}` is longer than {MAX_SHORT_CHARS} characters")
    for name in ("input", "output_a", "output_b"):
        if len(getattr(c, name).encode("utf-8")) > MAX_TEXT_BYTES:
            raise ValueError(f"`{name}` is over {MAX_TEXT_BYTES:,} bytes")
    v.check_comment(c.comment)
    protocol = stored_protocol(c.protocol)
    return check_spans(c.spans, {"A": c.output_a, "B": c.output_b, "input": c.input}, protocol, v.allowed(c.task),
                       v.protocols)


# ---------------------------------------------------------------------------------------------------------------
# Storage


def prepare(store: AnnotationStore, c: Comparison) -> Comparison:
    """A validated copy with spans sorted, id, item_key and times filled (kept when given, as on import)."""
    spans = check(store, c)
    out = dataclasses.replace(c, spans=spans, protocol=stored_protocol(c.protocol), annotator=c.annotator.strip())
    out.id = out.id or uuid.uuid4().hex
    out.item_key = comparison_key(c.task, c.input, [(c.system_a, c.output_a), (c.system_b, c.output_b)])
    out.created_at = parse_time(out.created_at) if out.created_at else utc_now()
    out.updated_at = parse_time(out.updated_at) if out.updated_at else out.created_at
    return out


def save_comparison(store: AnnotationStore, c: Comparison, *, owner: str = "") -> str:
    """Validate and store a new comparison in one transaction; `owner` is the signed-in account ("" in open use).
    Returns the id; ValueError (nothing saved) when a field is wrong."""
    new = prepare(store, dataclasses.replace(c, owner=owner or c.owner))
    with store.transaction() as conn:
        _insert(conn, new)
    return new.id


def update_comparison(store: AnnotationStore, cmp_id: str, *, by: str = "", **changes: Any) -> Comparison:
    """Change the judgement (preference, protocol, spans, comment) of a live comparison; the state before is kept
    in its history with `by` (who changed it). KeyError if absent or deleted."""
    allowed = {"preference", "protocol", "spans", "comment"}
    bad = sorted(set(changes) - allowed)
    if bad:
        raise ValueError(f"cannot change {', '.join(bad)}: only the judgement ({', '.join(sorted(allowed))}) can")
    with store.transaction() as conn:
        current = get_comparison(store, cmp_id)
        if current is None:
            raise KeyError(f"no comparison with id {cmp_id!r}")
        new = prepare(store, dataclasses.replace(current, **changes, updated_at=utc_now()))
        _keep_version(conn, current, "edit", by)
        conn.execute("UPDATE comparisons SET preference=?, protocol=?, spans=?, comment=?, updated_at=? WHERE id=?",
                     (new.preference, new.protocol, json.dumps(new.spans, ensure_ascii=False), new.comment,
                      new.updated_at, cmp_id))
    return new


def delete_comparison(store: AnnotationStore, cmp_id: str, *, by: str = "") -> bool:
    """Soft delete: the row stays with `deleted_at` and `deleted_by`, its state kept in its history; False when
    there is no live one."""
    with store.transaction() as conn:
        current = get_comparison(store, cmp_id)
        if current is None:
            return False
        _keep_version(conn, current, "delete", by)
        conn.execute("UPDATE comparisons SET deleted_at=?, deleted_by=? WHERE id=?", (utc_now(), by, cmp_id))
        return True


def restore_comparison(store: AnnotationStore, cmp_id: str, *, by: str = "") -> bool:
    """Bring back a deleted comparison as it was (`by`: who, kept in its history); False when it is not deleted."""
    with store.transaction() as conn:
        current = get_comparison(store, cmp_id, deleted=True)
        if current is None or not store.read("SELECT 1 FROM comparisons WHERE id=? AND deleted_at IS NOT NULL",
                                             (cmp_id,)):
            return False
        _keep_version(conn, current, "restore", by)
        conn.execute("UPDATE comparisons SET deleted_at=NULL, deleted_by='' WHERE id=?", (cmp_id,))
        return True


@dataclass(frozen=True)
class ComparisonVersion:
    """An earlier state of a comparison: `record` as it was before `action` ("edit", "delete", "restore" or
    "import") by `replaced_by` at `replaced_at`."""
    version: int
    action: str
    record: Comparison
    replaced_at: str
    replaced_by: str


def comparison_history(store: AnnotationStore, cmp_id: str) -> list[ComparisonVersion]:
    """Every earlier state of a comparison, oldest first: what it was before each edit, delete, restore or import
    over it, with who did that and when (the current state is `get_comparison`)."""
    rows = store.read("SELECT * FROM comparison_versions WHERE comparison_id=? ORDER BY version", (cmp_id,))
    return [ComparisonVersion(r["version"], r["action"], from_flat(json.loads(r["record"])), r["replaced_at"],
                              r["replaced_by"]) for r in rows]


def _keep_version(conn, c: Comparison, action: str, by: str) -> None:
    """Copy `c` (the stored state) into comparison_versions before it changes; inside the change's transaction."""
    n = conn.execute("SELECT COALESCE(MAX(version), 0) FROM comparison_versions WHERE comparison_id=?",
                     (c.id,)).fetchone()[0]
    conn.execute("INSERT INTO comparison_versions (comparison_id, version, action, record, replaced_at, replaced_by)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (c.id, n + 1, action, json.dumps(to_flat(c), ensure_ascii=False), utc_now(), by))


def get_comparison(store: AnnotationStore, cmp_id: str, *, deleted: bool = False) -> Comparison | None:
    rows = store.read("SELECT * FROM comparisons WHERE id=?" + ("" if deleted else " AND deleted_at IS NULL"),
                      (cmp_id,))
    return _from_row(rows[0]) if rows else None


def comparison_owner(store: AnnotationStore, cmp_id: str) -> str | None:
    rows = store.read("SELECT owner FROM comparisons WHERE id=?", (cmp_id,))
    return rows[0][0] if rows else None


def query_comparisons(store: AnnotationStore, *, task: str | None = None, annotator: str | None = None,
                      model: str | None = None, deleted: bool = False) -> list[Comparison]:
    """Live comparisons (or, `deleted`, the deleted ones), oldest first; `model` matches either side."""
    clauses, params = ["deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"], []
    for column, value in (("task", task), ("annotator", annotator)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if model:
        clauses.append("(model_id_a = ? OR model_id_b = ?)")
        params += [model, model]
    sql = f"SELECT * FROM comparisons WHERE {' AND '.join(clauses)} ORDER BY created_at, id"
    return [_from_row(r) for r in store.read(sql, params)]


def _insert(conn, c: Comparison) -> None:
    row = _to_row(c)
    conn.execute(f"INSERT INTO comparisons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                 list(row.values()))


def _replace(conn, c: Comparison) -> None:
    """Overwrite a stored comparison's columns with `c` in place (an UPDATE, so the job row that links it stays
    linked and its deletion marks stay)."""
    row = _to_row(c)
    cmp_id = row.pop("id")
    conn.execute(f"UPDATE comparisons SET {', '.join(f'{k}=?' for k in row)} WHERE id=?", [*row.values(), cmp_id])


def to_flat(c: Comparison) -> dict[str, Any]:
    """The export row: COLUMNS, decoding dicts and spans as objects."""
    out: dict[str, Any] = {}
    for name in COLUMNS:
        side = name[-1].upper() if name.endswith(("_a", "_b")) else ""
        base = name[:-2]
        if side and base in SYSTEM_FIELDS:
            out[name] = getattr(c.system(side), base)
        else:
            out[name] = getattr(c, name)
    return out


def from_flat(row: dict[str, Any], where: str = "") -> Comparison:
    """A Comparison from an export row, every column present and of its type (ValueError naming `where`)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(row, dict):
        raise ValueError(f"{prefix}expected a JSON object, got {type(row).__name__}")
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise ValueError(f"{prefix}missing field(s) {', '.join(missing)}: a comparison export has all of "
                         f"{', '.join(COLUMNS)}")
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"{prefix}unknown field(s) {', '.join(unknown)}")
    for name in COLUMNS:
        kind = dict if name in _DICT_COLUMNS else list if name == "spans" else str
        if not isinstance(row[name], kind):
            words = {dict: "a JSON object", list: "a list of span objects", str: "text"}[kind]
            raise ValueError(f"{prefix}field `{name}` must be {words}, got {str(row[name])[:40]!r}")
    systems = {s: System(**{f: row[f"{f}_{s.lower()}"] for f in SYSTEM_FIELDS}) for s in SIDES}
    rest = {k: row[k] for k in COLUMNS if k[:-2] not in SYSTEM_FIELDS or not k.endswith(("_a", "_b"))}
    return Comparison(system_a=systems["A"], system_b=systems["B"], **rest)


def _to_row(c: Comparison) -> dict[str, Any]:
    row = to_flat(c)
    for name in (*_DICT_COLUMNS, "spans"):
        row[name] = json.dumps(row[name], ensure_ascii=False)
    return row


def _from_row(r) -> Comparison:
    row = {k: r[k] for k in COLUMNS}
    for name in (*_DICT_COLUMNS, "spans"):
        row[name] = json.loads(row[name])
    return from_flat(row)


# ---------------------------------------------------------------------------------------------------------------
# Export and import


def export_comparisons(records: Sequence[Comparison], path: str | Path, fmt: str | None = None) -> Path:
    """Write comparisons to `path` as csv, jsonl or parquet (from `fmt`, else the suffix)."""
    path = Path(path)
    fmt = export_format(path, fmt)
    rows = [to_flat(c) for c in records]
    if fmt == "jsonl":
        return write_jsonl(rows, path)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if fmt == "csv":
        for name in (*_DICT_COLUMNS, "spans"):
            df[name] = df[name].map(lambda v: json.dumps(v, ensure_ascii=False))
        return write_csv(df, path, guard=COLUMNS)   # every column is text
    for name in _DICT_COLUMNS:
        df[name] = df[name].map(lambda v: json.dumps(v, ensure_ascii=False))
    df.to_parquet(path, index=False)
    return path


def read_comparisons(path: str | Path) -> list[tuple[str, Comparison]]:
    """(where, Comparison) pairs of an export file; `where` names the line or row for messages."""
    path = Path(path)
    fmt = export_format(path, None)
    if fmt == "jsonl":
        try:
            rows = list(read_jsonl(path))
        except ValueError as e:
            raise ValueError(f"{e}; nothing was imported") from None
        return [(where, from_flat(row, where)) for where, row in rows]
    out = []
    for where, row in read_table(path, fmt):
        for name in (*_DICT_COLUMNS, *(("spans",) if fmt == "csv" else ())):
            if isinstance(row.get(name), str):
                try:
                    row[name] = json.loads(row[name])
                except (ValueError, RecursionError):
                    raise ValueError(f"{where}: field `{name}` is not valid JSON") from None
        out.append((where, from_flat(row, where)))
    return out


@dataclass(frozen=True)
class ComparisonImport(ImportResult):
    """An ImportResult whose `skipped` includes `deleted`: rows whose comparison is deleted here, left deleted."""
    deleted: int = 0

    @property
    def message(self) -> str:
        text = (f"imported {self.added} new, updated {self.updated}, skipped {self.skipped - self.deleted} "
                "already present")
        if self.deleted:
            text += (f" and {self.deleted} deleted here (an import does not bring a deleted comparison back: an "
                     "admin restores it from the list of deleted comparisons)")
        return text


def import_comparisons(store: AnnotationStore, path: str | Path, *, by: str = "") -> ComparisonImport:
    """Import a comparison export, all or nothing: every row is checked first (ValueError naming the line or row,
    nothing written). An id already stored is replaced when the file's copy was edited later (the stored state goes
    into its history, with `by`, who imported), else skipped; a comparison deleted here stays deleted and is
    skipped (counted in `deleted` too)."""
    records = read_comparisons(path)
    if not records:
        raise ValueError(f"{Path(path).name} has no comparisons in it (an empty file?)")
    ready, seen = [], {}
    for where, c in records:
        if not c.id.strip():
            raise ValueError(f"{where}: `id` is empty; nothing was imported")
        if c.id in seen:
            raise ValueError(f"{where}: id {c.id} appears twice in the file (first at {seen[c.id]})")
        seen[c.id] = where
        try:
            new = prepare(store, c)
        except ValueError as e:
            raise ValueError(f"{where}: {e}; nothing was imported") from None
        if new.item_key != c.item_key:
            raise ValueError(f"{where}: `item_key` does not match the task, input, systems and outputs: the row "
                             "was edited after export, or comes from another tool")
        ready.append(new)
    added = updated = skipped = deleted = 0
    with store.transaction() as conn:
        for c in ready:
            row = conn.execute("SELECT * FROM comparisons WHERE id=?", (c.id,)).fetchone()
            if row is None:
                _insert(conn, c)
                added += 1
            elif row["deleted_at"] is not None:
                deleted += 1
                skipped += 1
            elif c.updated_at > row["updated_at"]:
                _keep_version(conn, _from_row(row), "import", by)
                _replace(conn, c)
                updated += 1
            else:
                skipped += 1
    return ComparisonImport(added, updated, skipped, deleted)


# ---------------------------------------------------------------------------------------------------------------
# Compare jobs: a file of inputs through both systems, then a blind queue


@dataclass(frozen=True)
class CompareJob:
    id: str
    name: str
    task: str
    systems: tuple[dict[str, Any], dict[str, Any]]   # system 1 and 2: provenance and the load request
    source: str
    total: int
    created_at: str
    owner: str = ""


@dataclass(frozen=True)
class CompareRow:
    job_id: str
    index: int
    text: str
    question: str
    context: str
    output_1: str | None
    output_2: str | None
    error: str | None
    flipped: bool          # True: system 2 is shown as A
    comparison_id: str | None
    reference: str = ""    # the human reference from the input file ('' without one)
    metricx_1: float | None = None   # each system's MetricX score, once the deployment's MetricX scored the row
    metricx_2: float | None = None

    @property
    def processed(self) -> bool:
        return self.output_1 is not None and self.output_2 is not None

    @property
    def inputs(self) -> dict[str, str]:
        return {"text": self.text, "question": self.question, "context": self.context}

    def shown(self) -> tuple[str, str]:
        """(output A, output B) as the annotator sees them."""
        one, two = self.output_1 or "", self.output_2 or ""
        return (two, one) if self.flipped else (one, two)


def system_from_settings(s: dict[str, Any]) -> System:
    return System(str(s.get("model_id", "")), str(s.get("model_revision", "")), str(s.get("family") or "mt5"),
                  str(s.get("dtype", "")), dict(s.get("decoding") or {}))


def create_compare_job(store: AnnotationStore, inputs: Sequence[Any], *, task: str, systems: Sequence[dict],
                       source: str = "", owner: str = "",
                       rng: random.Random | None = None) -> CompareJob:
    """Store a compare job and its rows (each with its A/B order drawn now); refuses two identical systems."""
    if not inputs:
        raise ValueError("a compare job needs at least one input")
    one, two = (system_from_settings(s) for s in systems)
    if same_system(one, two, task_decodes(task)):
        raise ValueError(identical_message(one))
    rng = rng or random.Random()
    job = CompareJob(uuid.uuid4().hex, source or task, task, (dict(systems[0]), dict(systems[1])), source,
                     len(inputs), utc_now(), owner)
    with store.transaction() as conn:
        conn.execute("INSERT INTO comparison_jobs (id, name, task, systems, source, total, created_at, owner) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (job.id, job.name, task, json.dumps(job.systems,
                                                                                          ensure_ascii=False),
                                                            source, job.total, job.created_at, owner))
        conn.executemany("INSERT INTO comparison_job_rows (job_id, idx, text, question, context, flipped, "
                         "reference) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [(job.id, i, x.text, x.question, x.context, int(rng.random() < 0.5),
                           getattr(x, "reference", "")) for i, x in enumerate(inputs)])
    return job


def get_compare_job(store: AnnotationStore, job_id: str) -> CompareJob:
    rows = store.read("SELECT * FROM comparison_jobs WHERE id=?", (job_id,))
    if not rows:
        raise KeyError(f"no compare job with id {job_id!r}")
    r = rows[0]
    return CompareJob(r["id"], r["name"], r["task"], tuple(json.loads(r["systems"])), r["source"], r["total"],
                      r["created_at"], r["owner"])


def list_compare_jobs(store: AnnotationStore) -> list[CompareJob]:
    return [get_compare_job(store, r[0]) for r in
            store.read("SELECT id FROM comparison_jobs ORDER BY created_at DESC, id")]


def compare_rows(store: AnnotationStore, job_id: str) -> list[CompareRow]:
    return [_job_row(r) for r in store.read("SELECT * FROM comparison_job_rows WHERE job_id=? ORDER BY idx",
                                            (job_id,))]


def compare_row(store: AnnotationStore, job_id: str, index: int) -> CompareRow:
    rows = store.read("SELECT * FROM comparison_job_rows WHERE job_id=? AND idx=?", (job_id, index))
    if not rows:
        raise IndexError(f"the compare job has rows 0–{get_compare_job(store, job_id).total - 1}, not {index}")
    return _job_row(rows[0])


def run_compare_job(store: AnnotationStore, job_id: str, process: Callable[[int, CompareRow], str],
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Run both systems (`process(system_number, row)`, 1 or 2) on every row not yet processed, committing each
    row at once (a job stopped half-way resumes); `should_stop()` true ends it before the next row. Returns
    (rows processed now, rows failed now)."""
    job = get_compare_job(store, job_id)
    pending = [r for r in compare_rows(store, job_id) if not r.processed]
    done, failed, ran = job.total - len(pending), 0, 0
    for row in pending:
        if should_stop is not None and should_stop():
            break
        ran += 1
        try:
            outputs, error = (process(1, row), process(2, row)), None
        except Exception as e:  # one bad row must not end the job; its error is kept and the next run retries it
            outputs, error = (None, None), f"{type(e).__name__}: {e}"
        with store.transaction() as conn:
            conn.execute("UPDATE comparison_job_rows SET output_1=?, output_2=?, error=?, processed_at=? "
                         "WHERE job_id=? AND idx=?", (*outputs, error, utc_now(), job_id, row.index))
        done += error is None
        failed += error is not None
        if progress:
            progress(done, job.total)
    return ran - failed, failed


def comparison_for_row(job: CompareJob, row: CompareRow, **judgement: Any) -> Comparison:
    """The Comparison of a processed row as it was shown (A, B), with the job's provenance."""
    if not row.processed:
        raise ValueError(f"row {row.index + 1} has no outputs yet: run the job first")
    one, two = (system_from_settings(s) for s in job.systems)
    (sys_a, sys_b), (out_a, out_b) = ((two, one) if row.flipped else (one, two)), row.shown()
    return Comparison(task=job.task, input=row_input_text(row), system_a=sys_a, output_a=out_a, system_b=sys_b,
                      output_b=out_b, app_version=str(job.systems[0].get("app_version", "")), **judgement)


def row_input_text(row: CompareRow) -> str:
    """The row's input as a comparison records it ("question: … context: …" for QA rows)."""
    return qa_prompt(row.question, row.context) if row.question else row.text


def judge_row(store: AnnotationStore, job_id: str, index: int, c: Comparison, *, owner: str = "") -> str:
    """Save the comparison of a row and link it, in one transaction; returns its id."""
    compare_row(store, job_id, index)
    new = prepare(store, dataclasses.replace(c, owner=owner or c.owner))
    with store.transaction() as conn:
        _insert(conn, new)
        conn.execute("UPDATE comparison_job_rows SET comparison_id=? WHERE job_id=? AND idx=?",
                     (new.id, job_id, index))
    return new.id


def _job_row(r) -> CompareRow:
    return CompareRow(r["job_id"], r["idx"], r["text"], r["question"], r["context"], r["output_1"], r["output_2"],
                      r["error"], bool(r["flipped"]), r["comparison_id"], r["reference"], r["metricx_1"],
                      r["metricx_2"])


def set_metricx(store: AnnotationStore, job_id: str, scores: Sequence[tuple[int, float, float]]) -> None:
    """Stores (row index, system 1's MetricX, system 2's) for the job's rows."""
    with store.transaction() as conn:
        conn.executemany("UPDATE comparison_job_rows SET metricx_1=?, metricx_2=? WHERE job_id=? AND idx=?",
                         [(one, two, job_id, idx) for idx, one, two in scores])
