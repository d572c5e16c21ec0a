"""The items of an evaluation campaign (app.annotation.campaigns): read from a file of plain records or from one
of the app's batch or compare jobs, and degraded copies for attention checks.

A plain-records file is CSV, JSONL or Parquet with the source text in `source` (or `text` / `input`) and the
outputs in one of three shapes:

* `output`: one system (named "system");
* `output_<name>` columns: one per system;
* `system` and `output` columns: one row per (item, system), rows of one item sharing its `id` (or its source).

`reference`, `id` and `expected` (an expected answer, JSON: an attention check) are optional; every other column
is kept as the item's metadata, as given. A bad file is refused whole, with its line (row for Parquet) and column.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..settings import MAX_ROWS
from .exchange import decode_utf8, jsonl_rows, plain_values
from .store import MAX_TEXT_BYTES

SOURCE_COLUMNS = ("source", "text", "input")
KNOWN_COLUMNS = ("id", "reference", "expected", "system", "output")
ONE_SYSTEM = "system"
MAX_SYSTEMS = 26      # slots A–Z
CHECK_KINDS = ("", "expected", "degraded")


@dataclass(frozen=True)
class CampaignItem:
    """One item: the source, each system's output, and for an attention check what it checks.
    `expected`: for "expected", the answer; for "degraded", {"of": the original's id, "stretches": {system:
    [start, end]}} (the replaced characters of each degraded output)."""
    item_id: str
    source: str
    outputs: dict[str, str]
    reference: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    check_kind: str = ""
    expected: Any = None
    public_id: str = ""     # what annotators see: random, so a check's id does not stand out among the file's ids


# ---------------------------------------------------------------------------------------------------------------
# Reading a file


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a CSV, JSONL or Parquet file as (where, row): where is "name line N" (row N for Parquet)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".ndjson", ".parquet"):
        raise ValueError(f"{path.name}: give the items as a .csv, .jsonl or .parquet file")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path.name} is empty: it needs a `source` column and the outputs")
    if suffix == ".parquet":
        return _parquet_rows(raw, path.name)
    text = decode_utf8(raw, path.name)
    if suffix == ".csv":
        return _csv_rows(text, path.name)
    return [(where, {str(k).strip(): v for k, v in rec.items()})
            for where, rec in jsonl_rows(text, path.name, example='{"source": "...", "output": "..."}')]


def _parquet_rows(raw: bytes, name: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        df = pd.read_parquet(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, …
        raise ValueError(f"{name} cannot be read as Parquet: {e}") from None
    return [(f"{name} row {i}", {str(k).strip(): plain_values(v) for k, v in rec.items()})
            for i, rec in enumerate(df.to_dict("records"), start=1)]


def _csv_rows(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
        out, line = [], reader.line_num + 1
        for cells in reader:
            if cells:
                if len(cells) != len(header):
                    raise ValueError(f"{name} line {line}: {len(cells)} cells for {len(header)} columns "
                                     f"({', '.join(header)}): quote cells that hold commas")
                out.append((f"{name} line {line}", dict(zip(header, cells))))
            line = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{name} line {reader.line_num}: cannot be read as CSV ({e})") from None
    except StopIteration:
        return []
    return out


# ---------------------------------------------------------------------------------------------------------------
# Records to items


@dataclass(frozen=True)
class Layout:
    """Which columns hold what, found from the header."""
    source: str
    outputs: dict[str, str]        # column -> system (wide), or {"output": ""} in long form
    long: bool


def layout(records: Sequence[tuple[str, dict[str, Any]]], name: str) -> Layout:
    columns = list(dict.fromkeys(k for _, rec in records for k in rec))
    lower = {c.lower(): c for c in columns}
    source = next((lower[c] for c in SOURCE_COLUMNS if c in lower), None)
    if source is None:
        raise ValueError(f"{name} has no `source` column (found: {', '.join(columns) or 'none'}): name the column "
                         "with the source text `source`, `text` or `input`")
    wide = {c: c[len("output_"):] for c in columns if c.lower().startswith("output_") and c[len("output_"):]}
    if "system" in lower and "output" in lower and not wide:
        return Layout(source, {lower["output"]: ""}, True)
    if "output" in lower and wide:
        raise ValueError(f"{name} has both `output` and `output_<system>` columns: use one `output` column per "
                         "system (`output_<system>`), or `system` and `output` columns with one row per system")
    if "output" in lower:
        return Layout(source, {lower["output"]: ONE_SYSTEM}, False)
    if not wide:
        raise ValueError(f"{name} has no outputs (found: {', '.join(columns)}): give an `output` column (one system), "
                         "`output_<system>` columns (one per system), or `system` and `output` columns (one row per "
                         "item and system)")
    if len(wide) > MAX_SYSTEMS:
        raise ValueError(f"{name} has {len(wide)} systems; a campaign shows at most {MAX_SYSTEMS}")
    return Layout(source, wide, False)


def _text(rec: dict[str, Any], column: str, where: str, *, required: bool = True) -> str:
    value = rec.get(column, "" if not required else None)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}, column `{column}`: must be text, got {json.dumps(value, default=str)[:40]}")
    if len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ValueError(f"{where}, column `{column}`: over {MAX_TEXT_BYTES:,} bytes")
    return value


def _expected(rec: dict[str, Any], where: str) -> Any:
    value = rec.get("expected")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}, column `expected`: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict) or not value:
        raise ValueError(f'{where}, column `expected`: give the expected answer as a JSON object, e.g. '
                         '{"score": [0, 30]} or {"preference": "<system>"}')
    return value


def _one_row(rec: dict[str, Any], where: str, lay: Layout, n: int) -> CampaignItem:
    source = _text(rec, lay.source, where)
    if not source.strip():
        raise ValueError(f"{where}, column `{lay.source}`: empty: fill in the source or remove the row")
    ident = rec.get("id")
    item_id = str(n) if ident is None or ident == "" else str(ident).strip()
    if isinstance(ident, (dict, list)) or len(item_id) > 200:
        raise ValueError(f"{where}, column `id`: must be a short text or number")
    outputs = {system: _text(rec, column, where) for column, system in lay.outputs.items()}
    taken = {lay.source, "id", "reference", "expected", *lay.outputs}
    metadata = {k: v for k, v in rec.items() if k not in taken}
    expected = _expected(rec, where)
    return CampaignItem(item_id, source, outputs, _text(rec, "reference", where, required=False), metadata,
                        "expected" if expected is not None else "", expected)


def items_from_records(records: Sequence[tuple[str, dict[str, Any]]], name: str,
                       max_rows: int = MAX_ROWS) -> list[CampaignItem]:
    """The items of a plain-records file; ValueError naming the line and column of the first problem."""
    if not records:
        raise ValueError(f"{name} has a header but no rows")
    if len(records) > max_rows:
        raise ValueError(f"{name} has {len(records):,} rows; the limit is {max_rows:,}: split the campaign")
    lay = layout(records, name)
    if lay.long:
        return _long_items(records, lay)
    items, seen = [], {}
    for n, (where, rec) in enumerate(records, start=1):
        item = _one_row(rec, where, lay, n)
        if item.item_id in seen:
            raise ValueError(f"{where}, column `id`: {item.item_id!r} is already the id of {seen[item.item_id]}")
        seen[item.item_id] = where
        items.append(item)
    return items


def _long_items(records: Sequence[tuple[str, dict[str, Any]]], lay: Layout) -> list[CampaignItem]:
    """One row per (item, system): rows grouped by id (or source when there is no id)."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for where, rec in records:
        key = str(rec["id"]) if rec.get("id") not in (None, "") else "\x00" + str(rec.get(lay.source))
        groups.setdefault(key, []).append((where, rec))
    systems = list(dict.fromkeys(str(rec.get("system", "")).strip() for _, rec in records))
    items = []
    for n, rows in enumerate(groups.values(), start=1):
        items.append(_long_item(rows, lay, n, systems))
    return items


def _long_item(rows: list[tuple[str, dict[str, Any]]], lay: Layout, n: int, systems: list[str]) -> CampaignItem:
    outputs, extra = {}, {}
    first_where, first = rows[0]
    for where, rec in rows:
        system = _text(rec, "system", where).strip()
        if not system:
            raise ValueError(f"{where}, column `system`: empty: name the system that wrote this output")
        if system in outputs:
            raise ValueError(f"{where}, column `system`: a second output of {system!r} for this item")
        if _text(rec, lay.source, where) != _text(first, lay.source, first_where):
            raise ValueError(f"{where}, column `{lay.source}`: differs from {first_where}, which has the same id")
        outputs[system] = _text(rec, "output", where)
        extra[system] = {k: v for k, v in rec.items() if k not in ("system", "output")}
    missing = [s for s in systems if s not in outputs]
    if missing:
        raise ValueError(f"{first_where}: this item has no output of system {', '.join(map(repr, missing))}: every "
                         "item needs one row per system")
    if len(systems) > MAX_SYSTEMS:
        raise ValueError(f"{first_where}: {len(systems)} systems; a campaign shows at most {MAX_SYSTEMS}")
    base = _one_row({**first, "output": ""}, first_where, replace(lay, outputs={"output": ""}), n)
    metadata = {k: v for k, v in base.metadata.items() if k != "system"}
    for key in metadata:   # a column whose value differs between the item's rows is kept per system
        if any(extra[s].get(key) != metadata[key] for s in extra):
            metadata[key] = {s: extra[s].get(key) for s in extra}
    return replace(base, outputs=outputs, metadata=metadata)


def load_items(path: str | Path, max_rows: int = MAX_ROWS) -> list[CampaignItem]:
    """The items of a plain-records file (CSV, JSONL or Parquet); ValueError naming the line and column."""
    return items_from_records(read_records(path), Path(path).name, max_rows)


# ---------------------------------------------------------------------------------------------------------------
# Attention checks: degraded copies


def degrade(text: str, donor: str, rng: random.Random) -> tuple[str, tuple[int, int]] | None:
    """`text` with a stretch of about a third of its words replaced by as many words of `donor` (WMT's "bad
    references"), and the replaced characters (start, end) in the new text; None when either has no words."""
    words, other = list(re.finditer(r"\S+", text)), donor.split()
    if not words or not other:
        return None
    k = max(1, min(len(words), round(len(words) / 3)))
    i = rng.randrange(len(words) - k + 1)
    j = rng.randrange(max(1, len(other) - k + 1))
    stretch = " ".join((other * (k // len(other) + 1))[j:j + k])
    start, end = words[i].start(), words[i + k - 1].end()
    return text[:start] + stretch + text[end:], (start, start + len(stretch))


def degraded_copies(items: Sequence[CampaignItem], fraction: float, rng: random.Random, *,
                    one_side: bool) -> list[CampaignItem]:
    """Copies of `fraction` of the items (at least one when fraction > 0 and there are two items) with their
    outputs degraded by words of another item's output; `one_side`: only one system's output is degraded (a
    pairwise campaign). Each copy gets a fresh id that does not reveal it is a check."""
    plain = [it for it in items if not it.check_kind]
    if fraction <= 0 or len(plain) < 2:
        return []
    count = max(1, round(fraction * len(plain)))
    copies = []
    for item in rng.sample(plain, min(count, len(plain))):
        donor = rng.choice([it for it in plain if it is not item])
        systems = [rng.choice(sorted(item.outputs))] if one_side else list(item.outputs)
        outputs, stretches = dict(item.outputs), {}
        for system in systems:
            done = degrade(item.outputs[system], donor.outputs.get(system) or next(iter(donor.outputs.values())),
                           rng)
            if done is not None:
                outputs[system], stretches[system] = done[0], list(done[1])
        if stretches:
            copies.append(CampaignItem(f"{rng.getrandbits(64):016x}", item.source, outputs, item.reference, {},
                                       "degraded", {"of": item.item_id, "stretches": stretches}))
    return copies
