"""Export to CSV, JSONL and Parquet and re-import: every field exact; CSV formula guard; bad imports change nothing."""
import csv
import json

import pytest

from app.annotation.exchange import csv_guard, csv_unguard
from app.annotation.store import Annotation, AnnotationStore, read_export

HOSTILE = [
    "Привет, мир", "שלום עולם", "مرحبا بالعالم", "你好，世界", "नमस्ते दुनिया", "Γειά σου", "안녕하세요",
    '=HYPERLINK("http://evil.example","click")', "+1+2", "-2", "@SUM(A1:A2)", "\tTab first", "\rCR first",
    "'already quoted", "line1\nline2\r\nline3\rline4", 'quotes "double" \'single\' ,comma; semi', "",
    "emoji 🙂👩‍👩‍👧 \u200f\u202bRTL marks\u202c", "<script>alert(1)</script>", "NA", "null", " padded  ",
]


def make(i: int, text: str) -> Annotation:
    return Annotation(task=["summarize", "answer", "tag"][i % 3], model_id="google/umt5-small" if i % 2 else "m/x",
                      model_revision="a" * 40, family="umt5" if i % 2 else "mt5", dtype="4-bit nf4" if i % 4 else "",
                      decoding={"num_beams": i, "temperature": 0.1 + 0.2, "do_sample": bool(i % 2), "stop": [text],
                                "none": None, "nested": {"א": text}},
                      input=text, output=text[::-1], rating=None if i % 5 == 0 else i % 5,
                      corrected_output=text + "\n✓", error_categories=["accuracy", "other"][: i % 3],
                      comment=f"{i}: {text}", annotator=f"annotator {text[:3]}" if text.strip() else "anon",
                      app_version=text[:10])


@pytest.fixture
def filled(databases):
    with AnnotationStore(databases("src.db")) as store:
        for i, text in enumerate(HOSTILE):
            store.save(make(i, text))
        store.update(store.query()[0].id, comment="edited")
        yield store


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_and_reimport_round_trips_every_field(databases, filled, tmp_path, fmt):
    path = filled.export(tmp_path / f"out.{fmt}")
    original = filled.query()
    assert [a for _, a in read_export(path)] == original
    with AnnotationStore(databases(f"dst-{fmt}.db")) as dst:
        assert dst.import_file(path).added == len(HOSTILE)
        assert dst.query() == original
        again = dst.import_file(path)
        assert (again.added, again.updated, again.skipped) == (0, 0, len(HOSTILE))


def test_export_respects_filters(filled, tmp_path):
    path = filled.export(tmp_path / "answer.jsonl", task="answer")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert {r["task"] for r in rows} == {"answer"} and len(rows) == filled.count(task="answer")
    assert isinstance(rows[0]["decoding"], dict) and isinstance(rows[0]["error_categories"], list)
    assert "\\/" not in path.read_text(encoding="utf-8")


def test_csv_cells_cannot_run_as_formulas(filled, tmp_path):
    path = filled.export(tmp_path / "out.csv")
    with path.open(encoding="utf-8-sig", newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert cells and not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=HYPERLINK(\"http://evil.example\",\"click\")" in cells
    assert "''already quoted" in cells     # so the guard is undone exactly
    for text in HOSTILE:
        assert csv_unguard(csv_guard(text)) == text
    # JSONL and Parquet keep the raw text
    jsonl = filled.export(tmp_path / "out.jsonl")
    assert any(json.loads(line)["input"].startswith("=") for line in jsonl.read_text(encoding="utf-8").splitlines())


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("breakage, message", [
    ("bad json", r"bad\.jsonl line 3: not valid JSON"),
    ("missing field", r"bad\.jsonl line 3: missing field\(s\) rating"),
    ("wrong type", r"bad\.jsonl line 3: field `rating` must be an integer 1–5 or null, got \"five\""),
    ("list type", r"bad\.jsonl line 3: field `error_categories` must be a list"),
    ("bad rating", r"line 3: rating must be a whole number from 1 to 5"),
    ("unknown category", r"line 3: unknown error category 'typo'"),
    ("huge comment", r"line 3: comment is 1,048,576 bytes"),
    ("edited item", r"line 3: `item_key` does not match"),
    ("duplicate id", r"line 3: id .* appears twice in the file \(first at bad\.jsonl line 1\)"),
    ("bad time", r"line 3: `created_at`: 'last tuesday' is not a date"),
])
def test_malformed_import_changes_nothing(databases, filled, tmp_path, breakage, message):
    with AnnotationStore(databases("dst.db")) as dst:
        dst.save(make(1, "already here"))
        before = dst.query()
        rows = [a.to_dict() for a in filled.query()[:4]]
        rows[0]["id"] = "new-first-row"                # valid rows before the bad one must not land either
        bad = rows[2]
        if breakage == "bad json":
            bad = json.dumps(bad)[:-5]
        elif breakage == "missing field":
            del bad["rating"]
        elif breakage == "wrong type":
            bad["rating"] = "five"
        elif breakage == "list type":
            bad["error_categories"] = "accuracy"
        elif breakage == "bad rating":
            bad["rating"] = 7
        elif breakage == "unknown category":
            bad["error_categories"] = ["typo"]
        elif breakage == "huge comment":
            bad["comment"] = "x" * 1024 * 1024
        elif breakage == "edited item":
            bad["output"] = "changed by hand"
        elif breakage == "duplicate id":
            bad["id"] = rows[0]["id"]
        elif breakage == "bad time":
            bad["created_at"] = "last tuesday"
        rows[2] = bad
        path = _jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(ValueError, match=message):
            dst.import_file(path)
        assert dst.query() == before


def test_import_empty_or_undecodable_file(databases, tmp_path):
    with AnnotationStore(databases("dst.db")) as dst:
        (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
        with pytest.raises(ValueError, match="empty.jsonl has no annotations"):
            dst.import_file(tmp_path / "empty.jsonl")
        (tmp_path / "latin.jsonl").write_bytes('{"comment": "café"}\n'.encode("latin-1"))
        with pytest.raises(ValueError, match="latin.jsonl is not UTF-8"):
            dst.import_file(tmp_path / "latin.jsonl")
        with pytest.raises(ValueError, match="unknown export format 'xlsx'"):
            dst.import_file(tmp_path / "x.xlsx")
        assert dst.count() == 0


def test_import_updates_only_newer_edits(databases, filled, tmp_path):
    first = filled.export(tmp_path / "v1.jsonl")
    with AnnotationStore(databases("dst.db")) as dst:
        dst.import_file(first)
        target = filled.query()[3]
        filled.update(target.id, rating=1, comment="changed later")
        result = dst.import_file(filled.export(tmp_path / "v2.jsonl"))
        assert (result.added, result.updated, result.skipped) == (0, 1, len(HOSTILE) - 1)
        assert dst.get(target.id).comment == "changed later"
        assert dst.import_file(first).updated == 0       # an older copy never overwrites a newer edit
        assert dst.get(target.id).comment == "changed later"
        assert "updated 0" in dst.import_file(first).message


def test_import_refuses_deeply_nested_jsonl_line(databases, filled, tmp_path):
    path = filled.export(tmp_path / "deep.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(1, "[" * 50_000 + "]" * 50_000)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with AnnotationStore(databases("dst.db")) as dst:
        with pytest.raises(ValueError,
                           match=r"deep\.jsonl line 2: not valid JSON \(nested too deeply.*nothing was imported"):
            dst.import_file(path)
        assert dst.count() == 0


def _parquet_with(filled, tmp_path, name, column, values):
    import pandas as pd

    path = filled.export(tmp_path / f"{name}.parquet")
    df = pd.read_parquet(path)
    df[column] = values if not callable(values) else values(df)
    df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("column", ["created_at", "updated_at"])
def test_import_refuses_parquet_timestamps_with_a_clear_message(databases, filled, tmp_path, column):
    import pandas as pd

    path = _parquet_with(filled, tmp_path, "ts", column, lambda df: pd.to_datetime(df[column], utc=True))
    with AnnotationStore(databases("dst.db")) as dst:
        with pytest.raises(ValueError, match=rf"ts\.parquet row 1: field `{column}` must be text \(an ISO 8601 "
                                             r"time\), got Timestamp"):
            dst.import_file(path)
        assert dst.count() == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_import_refuses_fractional_rating(databases, filled, tmp_path, fmt):
    import pandas as pd

    path = filled.export(tmp_path / f"frac.{fmt}")
    if fmt == "parquet":
        df = pd.read_parquet(path)
        df["rating"] = [4.5] + [float(r) if r is not pd.NA else None for r in df["rating"][1:]]
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        rows[0]["rating"] = "4.5"
        with path.open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        row = json.loads(lines[0])
        row["rating"] = 4.5
        lines[0] = json.dumps(row, ensure_ascii=False)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with AnnotationStore(databases("dst.db")) as dst:
        with pytest.raises(ValueError, match=r"frac\.\w+ (row|line) 1: .*rating.* must be .*1–5.*4\.5"):
            dst.import_file(path)
        assert dst.count() == 0


def test_parquet_whole_float_ratings_import_unchanged(databases, filled, tmp_path):
    import pandas as pd

    path = _parquet_with(filled, tmp_path, "floats", "rating",
                         lambda df: [float(r) if r is not pd.NA else None for r in df["rating"]])
    with AnnotationStore(databases("dst.db")) as dst:
        dst.import_file(path)
        assert dst.query() == filled.query()


@pytest.mark.parametrize("column, value, words", [
    ("input", ["a", "list"], "text"),
    ("comment", 7, "text"),
    ("annotator", None, "text"),
    ("error_categories", "accuracy", "a list of category ids"),
    ("error_categories", [1, 2], "categor"),
    ("rating", "4", "an integer 1–5 or null"),
    ("esa_score", "50", "an integer 0–100 or null"),
    ("mqm_score", "1.5", "a number or null"),
])
def test_parquet_wrong_types_are_refused_not_converted(databases, filled, tmp_path, column, value, words):
    import pandas as pd

    path = filled.export(tmp_path / "types.parquet")
    df = pd.read_parquet(path)
    df[column] = df[column].astype(object)
    df.at[0, column] = value
    try:
        df.to_parquet(path, index=False)
    except Exception:   # pyarrow cannot store this mix in one column: then every row gets the value
        df[column] = [value] * len(df)
        df.to_parquet(path, index=False)
    with AnnotationStore(databases("dst.db")) as dst:
        with pytest.raises(ValueError, match=rf"types\.parquet row 1: .*{words}"):
            dst.import_file(path)
        assert dst.count() == 0


def test_parquet_span_values_are_not_converted(databases, tmp_path):
    import pandas as pd

    with AnnotationStore(databases("src.db")) as src:
        src.save(Annotation(task="summarize", model_id="m/x", input="hello world", output="hello", annotator="a",
                            protocol="mqm", spans=[{"start": 0, "end": 5, "side": "output", "category": "accuracy",
                                                    "severity": "minor"}]))
        path = src.export(tmp_path / "spans.parquet")
        df = pd.read_parquet(path)
        df["spans"] = [[{"start": 0.0, "end": 4.5, "side": "output", "category": "accuracy", "severity": "minor"}]]
        df.to_parquet(path, index=False)
        with AnnotationStore(databases("dst.db")) as dst:
            with pytest.raises(ValueError, match=r"spans\.parquet row 1"):
                dst.import_file(path)
            assert dst.count() == 0
