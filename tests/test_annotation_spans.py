"""Error spans (ESA, MQM) on a real SQLite file: offsets, validation that changes nothing, the MQM score by hand,
UTF-16 offsets from the browser, and export/re-import in CSV, JSONL and Parquet with every field equal."""
import json

import pandas as pd
import pytest

from app.annotation.spans import (check_spans, index_to_utf16, load_protocols, mqm_score, parse_spans,
                                  segments, span_weight, utf16_to_index)
from app.annotation.store import Annotation, AnnotationStore, read_export

PROTOCOLS = load_protocols()
SOURCE = "مرحبا بالعالم، هذا نص للترجمة. 日本語のテキスト 👩‍👩‍👧"
OUTPUT = "שלום עולם 👋, this is a text to translate — 日本語"


def span(start, end, category, severity="minor", side="output"):
    return {"start": start, "end": end, "side": side, "category": category, "severity": severity}


def at(text, piece, category, severity="minor", side="output"):
    """The span over the first `piece` of `text`."""
    start = text.index(piece)
    return span(start, start + len(piece), category, severity, side)


def make(**kw) -> Annotation:
    base = dict(task="summarization", model_id="google/mt5-small", family="mt5", input=SOURCE, output=OUTPUT,
                annotator="Amina", rating=3, decoding={"num_beams": 4})
    return Annotation(**(base | kw))


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "ann.db") as s:
        yield s


ESA_SPANS = [at(OUTPUT, "עולם", "accuracy", "major"), at(OUTPUT, "👋", ""),
             at(SOURCE, "日本語のテキスト", "omission", "critical", side="input")]
MQM_SPANS = [at(OUTPUT, "שלום", "accuracy", "major"),          # 5
             at(OUTPUT, ",", "fluency/punctuation", "minor"),  # 0.1
             at(OUTPUT, "—", "fluency/punctuation", "major"),  # 5: only a minor punctuation error weighs 0.1
             at(OUTPUT, "translate", "style", "minor"),        # 1
             at(OUTPUT, "translate", "terminology", "critical"),  # 5: critical weighs as major (MQM-Freitag)
             at(OUTPUT, "日本語", "non_translation", "minor"),    # 25 whatever the severity
             at(SOURCE, "هذا نص", "accuracy", "minor", side="input")]  # 1: an omission marked in the source
MQM_BY_HAND = 5 + 0.1 + 5 + 1 + 5 + 25 + 1


def test_weights_are_freitag_2021():
    mqm = PROTOCOLS.get("mqm")
    assert dict(mqm.weights) == {"minor": 1, "major": 5, "critical": 5}
    assert span_weight(span(0, 1, "fluency/punctuation", "minor"), mqm) == 0.1
    assert span_weight(span(0, 1, "non_translation", "critical"), mqm) == 25
    assert [c.id for c in mqm.categories] == ["accuracy", "fluency", "fluency/punctuation", "terminology", "style",
                                              "locale", "other", "non_translation"]
    assert PROTOCOLS.severity_ids == ("minor", "major", "critical")
    assert PROTOCOLS.default in PROTOCOLS.by_id


def test_esa_and_mqm_annotations_saved_with_their_spans_and_scores(store):
    esa_id = store.save(make(protocol="esa", spans=list(reversed(ESA_SPANS)), esa_score=62))
    mqm_id = store.save(make(protocol="mqm", spans=MQM_SPANS, annotator="Yuki"))
    esa, mqm = store.get(esa_id), store.get(mqm_id)
    assert esa.protocol == "esa" and esa.esa_score == 62 and esa.mqm_score is None
    # kept sorted by side then position, whatever order they were marked in
    assert esa.spans == sorted(ESA_SPANS, key=lambda s: (s["side"], s["start"]))
    assert [OUTPUT[s["start"]:s["end"]] for s in esa.spans if s["side"] == "output"] == ["עולם", "👋"]
    assert [SOURCE[s["start"]:s["end"]] for s in esa.spans if s["side"] == "input"] == ["日本語のテキスト"]
    assert mqm.mqm_score == pytest.approx(MQM_BY_HAND) and mqm.mqm_score == 42.1
    assert mqm.esa_score is None and len(mqm.spans) == len(MQM_SPANS)
    # an edit recomputes the score
    kept = [s for s in mqm.spans if s["category"] != "non_translation"]
    assert store.update(mqm_id, spans=kept).mqm_score == pytest.approx(MQM_BY_HAND - 25)
    assert store.get(mqm_id).mqm_score == 17.1
    assert store.update(esa_id, esa_score=70, spans=[]).spans == []


@pytest.mark.parametrize("change, message", [
    (dict(spans=[span(0, len(OUTPUT) + 1, "accuracy")]), r"span 1: characters 0–\d+ are outside the output"),
    (dict(spans=[span(5, 5, "accuracy")]), "outside the output"),
    (dict(spans=[span(-1, 3, "accuracy")]), "outside the output"),
    (dict(spans=[span(0, len(SOURCE) + 1, "omission", side="input")]), "outside the input"),
    (dict(spans=[span(0, 6, "accuracy"), span(3, 9, "accuracy", "major")]),
     "span 2 overlaps span 1 .* with the same category 'accuracy'"),
    (dict(spans=[span(0, 4, "accuracy", "serious")]), "span 1: unknown severity 'serious': use one of minor, major"),
    (dict(spans=[span(0, 4, "style")]), "category 'style' is not one of the ESA categories"),
    (dict(spans=[span(0, 4, "accuracy", side="reference")]), "side 'reference' is not one of output, input"),
    (dict(spans=[{"start": 0, "end": 4, "side": "output", "category": "accuracy"}]), "span 1: missing severity"),
    (dict(spans=[span(0.5, 4, "accuracy")]), "`start` must be a whole number"),
    (dict(protocol="", spans=[span(0, 4, "accuracy")]), "spans need a protocol"),
    (dict(protocol="sqm"), "unknown annotation protocol 'sqm'"),
    (dict(esa_score=101), "ESA score must be a whole number from 0 to 100"),
    (dict(protocol="mqm", esa_score=50), "an ESA score was given but the protocol is 'mqm'"),
    (dict(protocol="mqm", spans=[span(0, 4, "accuracy", "major")], mqm_score=1.0), "does not match the spans"),
    (dict(protocol="mqm", spans=[span(0, 4, "omission")]), "category 'omission' is not one of the MQM categories"),
])
def test_bad_spans_are_refused_and_change_nothing(store, change, message):
    ann_id = store.save(make(protocol="esa", spans=ESA_SPANS, esa_score=50))
    before = store.query()
    with pytest.raises(ValueError, match=message):
        store.save(make(**({"protocol": "esa"} | change)))
    if "mqm_score" not in change:     # computed, never edited
        with pytest.raises(ValueError, match=message):
            store.update(ann_id, **({"protocol": "esa", "spans": [], "esa_score": None} | change))
    assert store.query() == before


def test_overlaps_of_different_categories_are_fine_and_touching_spans_do_not_overlap():
    texts = {"output": "abcdefghij", "input": "x"}
    ok = check_spans([span(0, 5, "accuracy"), span(2, 7, "fluency"), span(5, 9, "accuracy")], texts, "esa",
                     ["accuracy", "fluency"], PROTOCOLS)
    assert [(s["start"], s["end"]) for s in ok] == [(0, 5), (2, 7), (5, 9)]
    with pytest.raises(ValueError, match="span 3 overlaps span 1"):
        check_spans([span(0, 5, ""), span(7, 9, ""), span(4, 6, "")], texts, "esa", [], PROTOCOLS)
    assert segments("abcdefghij", ok)[:3] == [("ab", [0]), ("cde", [0, 1]), ("fg", [1, 2])]
    assert "".join(p for p, _ in segments("abcdefghij", ok)) == "abcdefghij"


def test_rendered_view_is_escaped_and_its_text_is_the_text():
    import html
    import re

    from app.annotation.spans import render_html

    text = "<script>alert(1)</script> & 👋 שלום"
    spans = [at(text, "alert", "", "major"), at(text, "👋 ש", "accuracy", "critical"), at(text, "👋", "")]
    out = render_html(text, spans, "output", title="Output")
    assert "<script>" not in out and out.count("<mark") == 3
    inner = out.split('data-span-side="output"', 1)[1].split(">", 1)[1].rsplit("</div></div>", 1)[0]
    assert html.unescape(re.sub(r"<[^>]+>", "", inner)) == text   # what a DOM range counts is the text
    assert 'class="span-mark span-critical"' in out               # the worst severity where spans overlap


def test_utf16_offsets_from_the_browser():
    text = "a👋b👩‍👩‍👧c שלום"
    # JavaScript: "a👋b".length == 4; the emoji is one Python character and two UTF-16 units
    assert utf16_to_index(text, 0) == 0 and utf16_to_index(text, 1) == 1
    assert utf16_to_index(text, 3) == 2 and text[2] == "b"
    js_length = len(text.encode("utf-16-le")) // 2
    assert utf16_to_index(text, js_length) == len(text)
    for i in range(len(text) + 1):
        assert utf16_to_index(text, index_to_utf16(text, i)) == i
        assert index_to_utf16(text, i) == len(text[:i].encode("utf-16-le")) // 2
    with pytest.raises(ValueError, match="inside the character"):
        utf16_to_index(text, 2)
    with pytest.raises(ValueError, match="past the end"):
        utf16_to_index(text, js_length + 1)


def test_parse_spans():
    assert parse_spans(None) == parse_spans("") == parse_spans("  ") == []
    assert parse_spans(json.dumps([span(0, 1, "")])) == [span(0, 1, "")]
    with pytest.raises(ValueError, match="JSON list"):
        parse_spans("[{")
    with pytest.raises(ValueError, match="not dict"):
        parse_spans({"start": 0})
    assert mqm_score([], PROTOCOLS) == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_spans_round_trip_every_format(tmp_path, fmt):
    """ESA and MQM annotations and one without spans, multilingual and RTL, spans on both sides."""
    with AnnotationStore(tmp_path / "src.db") as src:
        src.save(make(protocol="esa", spans=ESA_SPANS, esa_score=62, comment="=1+1"))
        src.save(make(protocol="mqm", spans=MQM_SPANS, annotator="Yuki"))
        src.save(make(protocol="esa", spans=[], esa_score=None, annotator="Dan"))
        src.save(make(task="classification", input="טקסט", output="positive", error_categories=["wrong_label"]))
        original = src.query()
        path = src.export(tmp_path / f"out.{fmt}")
    assert [a for _, a in read_export(path)] == original
    with AnnotationStore(tmp_path / "dst.db") as dst:
        result = dst.import_file(path)
        assert (result.added, result.updated, result.skipped) == (4, 0, 0)
        assert dst.query() == original
        by_protocol = {a.protocol: a for a in dst.query() if a.spans}
        assert by_protocol["mqm"].mqm_score == 42.1 and by_protocol["esa"].esa_score == 62
        assert by_protocol["mqm"].spans == sorted(MQM_SPANS, key=lambda s: (s["side"], s["start"], s["end"],
                                                                             s["category"]))
    if fmt == "csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        assert json.loads(df["spans"][0]) == sorted(ESA_SPANS, key=lambda s: (s["side"], s["start"]))
    if fmt == "jsonl":
        first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        assert isinstance(first["spans"], list) and set(first["spans"][0]) == {"start", "end", "side", "category",
                                                                               "severity"}


def test_older_exports_without_spans_still_import(tmp_path):
    """An export from before spans existed has no protocol/spans/score fields: it imports as categories only."""
    with AnnotationStore(tmp_path / "src.db") as src:
        src.save(make(error_categories=["fluency"]))
        row = src.query()[0].to_dict()
    for name in ("protocol", "spans", "esa_score", "mqm_score"):
        del row[name]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    with AnnotationStore(tmp_path / "dst.db") as dst:
        assert dst.import_file(path).added == 1
        got = dst.query()[0]
        assert (got.protocol, got.spans, got.esa_score, got.mqm_score) == ("", [], None, None)


@pytest.mark.parametrize("breakage, message", [
    ("outside", r"line 2: span 1: characters 0–49 are outside the output \(46 characters\).*; nothing was imported"),
    ("overlap", r"line 2: span 2 overlaps span 1"),
    ("severity", r"line 2: span 1: unknown severity 'blocker'"),
    ("score", r"line 2: the MQM score 3.0 does not match the spans"),
    ("not a list", r"line 2: field `spans` must be a list of \{start, end"),
])
def test_bad_spans_in_an_import_change_nothing(tmp_path, breakage, message):
    with AnnotationStore(tmp_path / "src.db") as src:
        src.save(make(protocol="esa", spans=ESA_SPANS, esa_score=10))
        src.save(make(protocol="mqm", spans=MQM_SPANS, annotator="Yuki"))
        rows = [a.to_dict() for a in src.query()]
    bad = rows[1]
    if breakage == "outside":
        bad["spans"] = [span(0, len(OUTPUT) + 3, "accuracy")]
    elif breakage == "overlap":
        bad["spans"] = [span(0, 4, "style"), span(2, 6, "style")]
    elif breakage == "severity":
        bad["spans"] = [span(0, 4, "style", "blocker")]
    elif breakage == "score":
        bad["mqm_score"] = 3.0
    elif breakage == "not a list":
        bad["spans"] = "0-4 style"
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with AnnotationStore(tmp_path / "dst.db") as dst:
        dst.save(make(annotator="already here"))
        before = dst.query()
        with pytest.raises(ValueError, match=message):
            dst.import_file(path)
        assert dst.query() == before


# ---------------------------------------------------------------------------------------------------------------
# The panel of the real app (app/main.py, demo checkpoints) on a real SQLite file


RECORD = {  # a summarization RunRecord as the tabs keep it
    "task": "summarization",
    "model": {"source": "demo/generation", "head": "generation", "dtype": "auto", "device": "cpu",
              "quantization": "none", "revision": None, "family": "mt5", "loaded_dtype": "float32"},
    "settings": {"num_beams": 1, "max_new_tokens": 8}, "input": {"text": SOURCE}, "output": OUTPUT,
    "output_text": OUTPUT, "attention": {}, "time": "2026-01-01T00:00:00+00:00", "app_version": "0.2.0",
}


def panel_handlers(store, task):
    """The panel's handlers for `task`'s tab, as its page calls them: this store, open use, the tab's task."""
    import functools

    from app.annotation.rights import OPEN
    from app.annotation.tabs import panel

    names = ("new_result", "recall", "add_span", "change_span", "remove_span", "switch_protocol")
    found = {name: functools.partial(getattr(panel, name), store, OPEN, task=task) for name in names}
    return {**found, "save_it": functools.partial(panel.save_it, store, OPEN)}


def selection(text, piece, occurrence=0):
    """What span_select.js sends for a mouse selection of `piece` in `text`: UTF-16 offsets and the text."""
    start = text.index(piece)
    for _ in range(occurrence):
        start = text.index(piece, start + 1)
    return index_to_utf16(text, start), index_to_utf16(text, start + len(piece)), piece


def spans_of(update):
    """The spans state in a handler's updates (the only list of dicts; the error categories are a list too)."""
    lists = [v for v in update.values() if isinstance(v, list)]
    assert lists, update
    spans = [v for v in lists if v and isinstance(v[0], dict)]
    assert len(spans) <= 1
    return spans[0] if spans else []


def message(update):
    return " ".join(str(v) for v in update.values() if isinstance(v, str))


@pytest.fixture
def real_app(tmp_path):
    from app.main import build_app, prepare
    from app.settings import Settings

    ctx, reason = prepare(True, Settings(demo_dir=tmp_path / "demo"))
    with AnnotationStore(tmp_path / "app.db") as store:
        yield build_app(ctx, reason, store=store), store


def test_panel_marks_saves_and_round_trips_esa_and_mqm(real_app, tmp_path):
    import gradio as gr

    from app.annotation.api import export

    app, store = real_app
    h = panel_handlers(store, "summarization")
    shown = h["new_result"](RECORD, "esa")
    views = [v for v in shown.values() if isinstance(v, str) and "data-span-side" in v]
    (view_in,) = [v for v in views if 'data-span-side="input"' in v]
    assert len(views) == 2 and 'data-span-panel="summarization-annotation" dir="rtl"' in view_in  # Arabic

    # ESA: a span after an emoji (UTF-16 offsets from the browser), one in the input, a bad one refused
    spans = []
    for side, text, piece, cat, sev in [("output", OUTPUT, "this is", "accuracy", "major"),
                                        ("output", OUTPUT, "👋", "", "minor"),
                                        ("input", SOURCE, "日本語のテキスト", "omission", "critical")]:
        s16, e16, picked = selection(text, piece)
        update = h["add_span"](RECORD, side, s16, e16, picked, cat, sev, spans, "esa")
        assert "Added" in message(update), message(update)
        spans = spans_of(update)
    assert [OUTPUT[s["start"]:s["end"]] for s in spans if s["side"] == "output"] == ["👋", "this is"]
    overlap = h["add_span"](RECORD, "output", *selection(OUTPUT, "is a"), "accuracy", "minor", spans, "esa")
    assert "overlaps" in message(overlap) and not [v for v in overlap.values() if isinstance(v, list)]
    stale = h["add_span"](RECORD, "output", 0, 4, "not the text", "accuracy", "minor", spans, "esa")
    assert "does not match" in message(stale)
    nothing = h["add_span"](RECORD, "", -1, -1, "", "accuracy", "minor", spans, "esa")
    assert "Select a stretch" in message(nothing)
    # change the emoji span's severity, then remove it and add it back
    changed = spans_of(h["change_span"](RECORD, 0, "", "major", spans, "esa"))
    assert changed[0]["severity"] == "major" and len(changed) == 3
    assert len(spans_of(h["remove_span"](RECORD, 0, changed, "esa"))) == 2
    saved = h["save_it"](RECORD, "3", OUTPUT, ["fluency"], "ok", "Amina", None, "esa", changed, 64.0)
    assert "with 3 span(s)" in message(saved), message(saved)
    (esa,) = store.query()
    assert (esa.protocol, esa.esa_score, esa.mqm_score, esa.spans) == ("esa", 64, None, changed)
    # the same output again (run again, or after a reload): Amina's judgement and spans come back
    again = h["new_result"](RECORD, "mqm", "Amina")
    values = [v for v in again.values() if isinstance(v, (str, int))]
    assert spans_of(again) == changed and esa.id in values and "annotated this output before" in message(again)
    assert "esa" in values and 64 in values
    fresh = h["new_result"](RECORD, "mqm", "Someone else")
    assert spans_of(fresh) == [] and esa.id not in [v for v in fresh.values() if isinstance(v, str)]
    assert spans_of(h["recall"](RECORD, "Amina", [], None)) == changed   # the name typed after the result
    kept = h["recall"](RECORD, "Amina", changed, None)                     # work under way is never replaced
    assert len(kept) == 1 and not [v for v in kept.values() if isinstance(v, (list, str))]

    # MQM: the typology; the score by hand
    switched = h["switch_protocol"](RECORD, [], "mqm")
    (dropdown,) = [v for v in switched.values() if isinstance(v, gr.Dropdown)]
    assert [c for _, c in dropdown.choices][-1] == "non_translation"
    mqm_spans = []
    for side, text, piece, cat, sev in [("output", OUTPUT, "שלום", "accuracy", "major"),          # 5
                                        ("output", OUTPUT, ",", "fluency/punctuation", "minor"),  # 0.1
                                        ("output", OUTPUT, "translate", "style", "minor"),        # 1
                                        ("output", OUTPUT, "translate", "terminology", "critical"),  # 5
                                        ("input", SOURCE, "هذا نص", "accuracy", "minor")]:        # 1
        update = h["add_span"](RECORD, side, *selection(text, piece), cat, sev, mqm_spans, "mqm")
        assert "Added" in message(update), message(update)
        mqm_spans = spans_of(update)
        assert "MQM score" in message(update)
    wrong = h["add_span"](RECORD, "output", *selection(OUTPUT, "text"), "omission", "minor", mqm_spans, "mqm")
    assert "not one of the MQM categories" in message(wrong)
    h["save_it"](RECORD, None, "", [], "", "Yuki", None, "mqm", mqm_spans, None)
    mqm = store.query(annotator="Yuki")[0]
    assert mqm.mqm_score == pytest.approx(5 + 0.1 + 1 + 5 + 1) == 12.1

    # categories only, as before: spans without a protocol are refused, nothing saved
    refused = h["save_it"](RECORD, "4", "", [], "", "Dan", None, "none", mqm_spans, None)
    assert "spans need a protocol" in message(refused) and store.count() == 2

    for fmt in ("csv", "jsonl", "parquet"):
        path = export(store, fmt, folder=tmp_path / fmt)
        with AnnotationStore(tmp_path / f"again-{fmt}.db") as again:
            assert again.import_file(path).added == 2
            assert again.query() == store.query()


def test_panel_offers_the_tasks_own_categories(real_app):
    app, _ = real_app
    page = json.dumps(app.blocks.get_config_file(), default=str)
    for cat in ("wrong_boundary", "missed_entity", "ambiguous_item", "not_answerable", "partially_correct"):
        assert f'"{cat}"' in page
    config = app.blocks.get_config_file()
    by_id = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c.get("props")}
    tagging = [v for _, v in by_id["tagging-annotation-categories"]["choices"]]
    assert tagging == ["wrong_label", "wrong_boundary", "missed_entity", "other"]
    classification = [v for _, v in by_id["classification-annotation-categories"]["choices"]]
    assert classification == ["wrong_label", "ambiguous_item", "other"]
    help_lines = by_id["question_answering-annotation-category-help"]["value"].splitlines()
    assert len(help_lines) == 4 and help_lines[0].startswith("- **Wrong span**: ")


# ---------------------------------------------------------------------------------------------------------------
# /annotate with spans, /import, and refusals through gradio_client on a real server


def test_annotate_with_spans_and_import_through_gradio_client(tmp_path):
    import gradio as gr
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from app.annotation.api import endpoints, mount

    with AnnotationStore(tmp_path / "server.db") as store:
        with gr.Blocks() as demo:
            mount(store)
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
        try:
            client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
            esa = client.predict("summarization", "google/mt5-small", SOURCE, OUTPUT, 4, None, ["fluency"], "",
                                 "Amina", "main", "mt5", "float32", "{}", "0.2.0", "esa", ESA_SPANS, 55,
                                 api_name="/annotate")
            assert esa["id"] and esa["protocol"] == "esa" and esa["esa_score"] == 55 and esa["mqm_score"] is None
            assert esa["spans"] == store.get(esa["id"]).spans and len(esa["spans"]) == 3
            mqm = client.predict(task="summarization", model_id="google/mt5-small", input_text=SOURCE,
                                 output_text=OUTPUT, annotator="Yuki", protocol="mqm",
                                 spans=json.dumps(MQM_SPANS, ensure_ascii=False), api_name="/annotate")
            assert mqm["mqm_score"] == pytest.approx(MQM_BY_HAND) and set(mqm) == {
                "id", "item_key", "message", "protocol", "spans", "esa_score", "mqm_score"}

            before = store.query()
            for bad, why in [([span(0, 999, "accuracy")], "outside the output"),
                             ([span(0, 4, "accuracy", "fatal")], "unknown severity 'fatal'"),
                             ([span(0, 4, "accuracy"), span(2, 6, "accuracy")], "overlaps")]:
                with pytest.raises(AppError, match=f"Not saved: .*{why}"):
                    client.predict("summarization", "m", SOURCE, OUTPUT, None, None, [], "", "Dan", "", "mt5", "",
                                   "", "", "esa", bad, None, api_name="/annotate")
            assert store.query() == before

            exported = client.predict("parquet", api_name="/export")
            with store.transaction() as conn:   # gone from this database for good (a delete is soft)
                conn.execute("DELETE FROM annotations WHERE id=?", (esa["id"],))
            result = client.predict(handle_file(exported), api_name="/import")
            assert (result["added"], result["updated"], result["skipped"]) == (1, 0, 1), result
            assert store.query() == before
            broken = tmp_path / "broken.jsonl"
            broken.write_text('{"id": "x"}\n', encoding="utf-8")
            with pytest.raises(AppError, match="Nothing imported: .*missing field"):
                client.predict(handle_file(str(broken)), api_name="/import")
            assert store.query() == before
        finally:
            demo.close()
        # a path on the server is not a file sent by the client
        with pytest.raises(gr.Error, match="send the file itself"):
            endpoints(store)["import"]({"path": str(tmp_path / "server.db")})


def test_a_mouse_selection_becomes_a_span_without_its_edge_spaces():
    from app.annotation.spans import selected_span

    text = "👋 مرحبا بالعالم  ok"          # the emoji is 2 UTF-16 units in the browser, 1 character here
    assert selected_span(text, 3, 9, "مرحبا ") == (2, 7)           # a double-click's trailing space dropped
    with pytest.raises(ValueError, match="does not match the text shown"):
        selected_span(text, 3, 9, "other")
    with pytest.raises(ValueError, match="only spaces are selected"):
        selected_span(text, 16, 18, "  ")
    with pytest.raises(ValueError, match="falls inside the character .*select the text again"):
        selected_span(text, 1, 4, "x")
