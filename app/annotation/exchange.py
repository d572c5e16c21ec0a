"""Files in and out of the annotation wing: the formats, not the records.

One JSONL reader for every kind of file the wing takes (annotation and comparison exports, batch inputs, campaign
items and exports): `jsonl_rows` yields (where, dict) for each line, `where` being "name line N" for messages, and
refuses a malformed line or one that is not an object with that line named (app.errors.read_json_line). CSV and
Parquet tables read as (where, dict) rows too, "name row N" (a CSV row can span lines). Each caller turns the
dicts into its own records and checks them.

Writers: JSONL by the json module row by row (pandas' to_json rounds floats to 10 digits and writes `\\/`); CSV and
Parquet by pandas. Only CSV guards against spreadsheet formulas (`csv_guard`); JSONL and Parquet keep the raw text.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import read_json_line

FORMATS = ("csv", "jsonl", "parquet")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_format(path: Path, fmt: str | None) -> str:
    """The file format of an export: `fmt`, else the suffix (json/ndjson mean JSONL, pq Parquet); ValueError
    for another."""
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} for {path.name}: use .csv, .jsonl or .parquet")
    return fmt


# ---------------------------------------------------------------------------------------------------------------
# Reading


def decode_utf8(raw: bytes, name: str) -> str:
    """A file's bytes as text (a UTF-8 BOM dropped); ValueError naming the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8 text (byte {raw[e.start]:#04x} at position {e.start}): save it as "
                         "UTF-8 (in Excel: CSV UTF-8)") from None


def jsonl_rows(text: str, name: str, *, example: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every non-blank line of JSONL `text`; `where` is "`name` line N" ("line N" for no name).
    ValueError naming the line for malformed JSON, JSON nested too deeply, or a value that is not an object
    (`example` shows the object expected, e.g. '{"text": "..."}')."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}" if name else f"line {number}"
        row = read_json_line(line, where)
        if not isinstance(row, dict):
            like = f" like {example}" if example else ""
            raise ValueError(f"{where}: expected a JSON object{like}, got {type(row).__name__}")
        yield where, row


def read_jsonl(path: str | Path, *, example: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """`jsonl_rows` of a file, named by its file name (not the server's path to an upload)."""
    path = Path(path)
    yield from jsonl_rows(decode_utf8(path.read_bytes(), path.name), path.name, example=example)


def read_table(path: str | Path, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a CSV ("csv": every cell text, "NA" stays a word, guards undone) or Parquet file ("parquet":
    numpy values as Python ones) as ("`name` row N", row). ValueError for a file that cannot be read."""
    path = Path(path)
    text = decode_utf8(path.read_bytes(), path.name) if fmt == "csv" else ""
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False) if fmt == "csv" \
            else pd.read_parquet(path)
    except Exception as e:  # pandas/pyarrow raise many kinds for a broken file
        # the reader's message may hold the server's path to the upload: show the file's name only
        raise ValueError(f"{path.name} cannot be read as {fmt.upper()}: {str(e).replace(str(path), path.name)}"
                         ) from None
    rows = []
    for i, raw in enumerate(df.to_dict("records"), start=1):
        row = {k: plain_values(v) for k, v in raw.items()}
        if fmt == "csv":
            row = {k: csv_unguard(v) if isinstance(v, str) else v for k, v in row.items()}
        rows.append((f"{path.name} row {i}", row))
    return rows


def json_field(text: Any, name: str, where: str) -> Any:
    """A cell holding JSON (a CSV's lists and objects), read; ValueError naming the field and row."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where}: field `{name}` is nested too deeply") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field `{name}` is not valid JSON: {str(text)[:60]!r}") from None


def plain_values(value: Any) -> Any:
    """Numpy scalars and arrays (as Parquet gives them back) as the same Python values; nothing else changes."""
    if isinstance(value, np.ndarray):
        return [plain_values(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [plain_values(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line, UTF-8 as is, LF line ends. Returns `path`."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_csv(df: pd.DataFrame, path: str | Path, *, guard: Sequence[str]) -> Path:
    """`df` as CSV, the text columns `guard` made inert in spreadsheets. Returns `path`."""
    df = df.copy()
    df[list(guard)] = df[list(guard)].map(csv_guard)
    # utf-8-sig: Excel needs the BOM to read UTF-8; pandas strips it again on read. QUOTE_ALL: the csv module
    # leaves a bare CR unquoted when the line terminator is LF, and readers then split the row there.
    df.to_csv(path, index=False, encoding="utf-8-sig", lineterminator="\n", quoting=csv.QUOTE_ALL)
    return Path(path)


def csv_guard(text: str) -> str:
    """Make a cell inert in spreadsheets: text starting with = + - @ tab or CR (a formula to Excel, LibreOffice,
    Sheets) gets a leading `'`. Text already starting with `'` gets one more, so `csv_unguard` is exact."""
    return "'" + text if text.startswith(_FORMULA_START + ("'",)) else text


def csv_unguard(text: str) -> str:
    return text[1:] if text.startswith("'") else text
