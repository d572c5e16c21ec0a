"""The annotation UI: its plain functions against a real SQLite file, the tabs building, and the `/annotate` and
`/export` endpoints through gradio_client (multilingual, right-to-left and `<script>` text round-tripping)."""
import json
from types import SimpleNamespace

import pytest

from app.annotation.api import (NO_RESULT, annotate, export, filters, parse_rating, provenance,
                                row_output, save_from_record)
from app.annotation.store import AnnotationStore, read_export

TEXTS = {"input": "مرحبا بالعالم <script>alert(1)</script> 日本語のテキスト", "output": "=SUM(A1) שלום עולם 👋"}
RECORD = {  # a RunRecord as the tabs keep it (dataclasses.asdict)
    "task": "summarization",
    "model": {"source": "google/mt5-small", "head": "generation", "dtype": "auto", "device": "cpu",
              "quantization": "nf4", "revision": None, "family": "mt5", "loaded_dtype": "bfloat16",
              "parameters": 300},
    "settings": {"num_beams": 4, "max_new_tokens": 64},
    "input": {"text": TEXTS["input"]}, "output": TEXTS["output"], "output_text": TEXTS["output"],
    "attention": {}, "time": "2026-01-01T00:00:00+00:00", "app_version": "0.2.0",
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MT5_STUDIO_DB", str(tmp_path / "annotations.db"))
    s = AnnotationStore()
    assert s.path == tmp_path / "annotations.db"
    yield s
    s.close()


def test_save_from_record_keeps_provenance_and_updates_on_second_save(store):
    ann_id = save_from_record(store, RECORD, "4", TEXTS["output"] + " ✓", ["fluency"], "<b>ok</b>", "  Amina ")
    a = store.get(ann_id)
    assert (a.task, a.model_id, a.family, a.dtype) == ("summarization", "google/mt5-small", "mt5",
                                                       "bfloat16, 4-bit nf4")
    assert a.decoding == {"num_beams": 4, "max_new_tokens": 64} and a.app_version == "0.2.0"
    assert (a.input, a.output, a.rating, a.annotator) == (TEXTS["input"], TEXTS["output"], 4, "Amina")
    assert a.corrected_output == TEXTS["output"] + " ✓" and a.comment == "<b>ok</b>"
    assert save_from_record(store, RECORD, 5, "x", [], "", "Amina", ann_id) == ann_id   # same result: an update
    assert store.count() == 1 and store.get(ann_id).rating == 5
    qa = dict(RECORD, task="question_answering", input={"question": "Who?", "context": "Ada."})
    assert provenance(qa)["input"] == "question: Who? context: Ada."


def test_save_from_record_refuses_clearly(store):
    with pytest.raises(ValueError, match="run the task first"):
        save_from_record(store, None, 4, "", [], "", "Amina")
    assert NO_RESULT.startswith("There is no result")
    with pytest.raises(ValueError, match="annotator"):
        save_from_record(store, RECORD, 4, "", [], "", "   ")
    with pytest.raises(ValueError, match="rating"):
        save_from_record(store, RECORD, 7, "", [], "", "Amina")
    with pytest.raises(ValueError):
        save_from_record(store, RECORD, 3, "", [], "x" * (1024 * 1024), "Amina")    # 1 MB comment
    with pytest.raises(ValueError):
        save_from_record(store, RECORD, 3, "", ["no_such_category"], "", "Amina")
    assert store.count() == 0


def test_annotate_and_export_round_trip_every_format(store, tmp_path):
    first = annotate(store, "summarization", "google/mt5-small", TEXTS["input"], TEXTS["output"], rating=2,
                     error_categories="accuracy, omission", comment="-1 @x", annotator="Yuki",
                     decoding='{"num_beams": 2}', dtype="float32")
    assert first["id"] and first["message"].startswith("Saved")
    a = store.get(first["id"])
    assert a.corrected_output == TEXTS["output"] and a.error_categories == ["accuracy", "omission"]
    with pytest.raises(ValueError, match="the judgement is empty: give a rating"):   # it would count as done
        annotate(store, "classification", "demo/cls", "טקסט", "positive", annotator="Dan", rating=None)
    second = annotate(store, "classification", "demo/cls", "טקסט", "positive", annotator="Dan", rating=None,
                      corrected_output="negative")
    assert store.get(second["id"]).rating is None and store.count() == 2
    with pytest.raises(ValueError, match="rating"):
        annotate(store, "summarization", "m", "in", "out", rating=9, annotator="Dan")
    assert store.count() == 2
    for fmt in ("csv", "jsonl", "parquet"):
        path = export(store, fmt, folder=tmp_path / fmt)
        assert path.suffix == f".{fmt}" and path.parent == tmp_path / fmt
        assert {r.id: r for _, r in read_export(path)} == {r.id: r for r in store.query()}
    only = export(store, "jsonl", task="summarization", min_rating=1, max_rating=3, folder=tmp_path)
    assert [r.id for _, r in read_export(only)] == [first["id"]]
    with pytest.raises(ValueError, match="format"):
        export(store, "xlsx")


def test_filters_from_the_page():
    assert filters("(all)", "", None, "", "", 1, 5) == {}
    f = filters("summarization", "m", "Amina", "2026-01-01", "2026-01-31", 2.0, 4.0)
    assert f["task"] == "summarization" and str(f["until"]) == "2026-01-31"
    assert (f["min_rating"], f["max_rating"]) == (2, 4)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        filters(since="2026-31-01")
    with pytest.raises(ValueError, match="above"):
        filters(min_rating=4, max_rating=2)
    assert parse_rating("") is None and parse_rating(0) is None and parse_rating("3") == 3


def test_row_output_per_task():
    answer = SimpleNamespace(answer=SimpleNamespace(text="Ada"))
    assert row_output("question_answering", answer) == "Ada"
    assert row_output("generative_qa", SimpleNamespace(answer=None)) == ""
    assert row_output("classification", SimpleNamespace(label="positive")) == "positive"
    ents = [SimpleNamespace(text="Paris", label="LOC"), SimpleNamespace(text="Ada", label="PER")]
    assert row_output("tagging", SimpleNamespace(entities=ents)) == "Paris (LOC); Ada (PER)"
    assert row_output("summarization", SimpleNamespace(text="short")) == "short"


def minimal_context():
    """An AppContext as app/main.py makes one, with the registry from assets/ but no CSS/examples needed."""
    from app.assets import ASSETS, Assets, TaskModels
    from app.context import AppContext
    from app.settings import Settings

    registry = json.loads((ASSETS / "models.json").read_text(encoding="utf-8"))
    assets = Assets(examples={}, models={t: TaskModels(**e) for t, e in registry["tasks"].items()},
                    demo_heads=registry["demo"], css="", js={},
                    help={"annotation": (ASSETS / "help" / "annotation.md").read_text(encoding="utf-8")})
    return AppContext.create(Settings(), assets)


def test_blocks_build(store):
    import gradio as gr

    from app.annotation.api import mount
    from app.annotation.tabs import annotations, batch_tab, panel as annotation_panel
    from app.tabs.common import TabHandle, model_picker, mount_panels

    ctx = minimal_context()
    annotation_panel.register(ctx, store)
    assert len(ctx.panels) == 1
    with gr.Blocks() as demo:
        with gr.Tab("Summarize"):
            out = gr.Textbox()
            handle = TabHandle("summarization", {}, {"summary": out}, {}, model_picker(ctx, "summarization"),
                               gr.State(None), gr.HTML(), gr.Column())
            mount_panels(ctx, handle)
        with gr.Tab("Annotations"):
            annotations.build(ctx, store)
        with gr.Tab("Batch"):
            batch_tab.build(ctx, store)
        mount(store)
    config = demo.get_config_file()
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"annotate", "export"} <= names
    # every handler of these tabs is private: only the two endpoints are public
    public = {d.get("api_name") for d in config["dependencies"] if d.get("api_visibility", "public") == "public"}
    assert public == {"annotate", "export", "import"}


def test_endpoints_through_gradio_client(store, tmp_path):
    import gradio as gr
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from app.annotation.api import mount

    with gr.Blocks() as demo:
        mount(store)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
        saved = client.predict("summarization", "google/mt5-small", TEXTS["input"], TEXTS["output"], 5,
                               "تصحيح <script>x</script>", ["fluency"], "+cmd", "Amina", "main", "umt5",
                               "bfloat16", '{"num_beams": 4}', api_name="/annotate")
        assert saved["id"], saved
        with pytest.raises(AppError, match="Not saved: rating"):   # a script cannot lose it silently
            client.predict("summarization", "m", "in", "out", 9, None, [], "", "Amina", api_name="/annotate")
        path = client.predict("jsonl", api_name="/export")
        records = [r for _, r in read_export(path)]
        assert len(records) == 1 and records[0] == store.get(saved["id"])
        r = records[0]
        assert (r.input, r.output, r.corrected_output) == (TEXTS["input"], TEXTS["output"], "تصحيح <script>x</script>")
        assert (r.family, r.model_revision, r.decoding, r.comment) == ("umt5", "main", {"num_beams": 4}, "+cmd")
    finally:
        demo.close()


def handler(demo, name):
    """A task tab's handler of the built page by its function's name (the annotation tabs' handlers are module
    functions: the tests call those)."""
    found = list({id(f.fn): f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name}.values())
    assert len(found) == 1, (name, len(found))
    return found[0]


def text_of(update):
    return update if isinstance(update, str) else update.value if hasattr(update, "value") else update


def annotation_page(store, settings=None):
    """A page with the panel under a summarization result, the Annotations tab and the Batch tab (as main.py
    builds them), on `settings` (default: open use)."""
    import gradio as gr

    from app.annotation.tabs import annotations, batch_tab, panel as annotation_panel
    from app.tabs.common import TabHandle, model_picker, mount_panels

    ctx = minimal_context()
    if settings is not None:
        ctx.settings = settings
    annotation_panel.register(ctx, store)
    with gr.Blocks() as demo:
        handle = TabHandle("summarization", {}, {}, {}, model_picker(ctx, "summarization"), gr.State(None),
                           gr.HTML(), gr.Column())
        mount_panels(ctx, handle)
        annotations.build(ctx, store)
        batch_tab.build(ctx, store)
    return demo


def test_handlers_panel_table_and_queue(store, tmp_path):
    from app.annotation.batch import BatchInput, create_job, job_progress
    from app.annotation.rights import OPEN
    from app.annotation.tabs import annotations, batch_tab, panel

    # the panel: a new result starts empty (the correction too: "not looked at" is not "no correction needed");
    # saving needs a result and a judgement; messages are escaped text
    prefilled = panel.new_result(store, OPEN, RECORD, task="summarization")
    assert text_of(prefilled["fields.corrected"]) == "" and prefilled["saved_id"] is None
    assert NO_RESULT in panel.save_it(store, OPEN, None, "4", "", [], "", "Amina", None)["status"]
    refused = panel.save_it(store, OPEN, RECORD, "4", "", ["<script>"], "", "Amina", None)["status"]
    assert "Not saved" in refused and "<script>" not in refused and "&lt;script&gt;" in refused
    saved = panel.save_it(store, OPEN, RECORD, "4", "fixed", ["fluency"], "<script>alert(1)</script>", "Amina", None)
    ann_id = saved["saved_id"]
    assert store.get(ann_id).comment == "<script>alert(1)</script>"

    # the table: refresh, select, edit, export, a malformed import changes nothing, delete
    shown = annotations.refresh_all(store, OPEN, "(all)", "(all)", "(all)", "", "", 1, 5)
    df, ids = shown["table"], shown["shown_ids"]
    assert list(df["id"]) == [ann_id[:8]] and ids == {ann_id[:8]: ann_id}   # short ids shown
    picked = annotations.select(store, OPEN, ids, list(df.iloc[0]))
    assert picked["selected"] == ann_id and text_of(picked["editor.views.output"]).count("data-span-side") == 1
    annotations.save_changes(store, OPEN, ann_id, "2", "fixed again", [], "ok", "Amina")
    assert (store.get(ann_id).rating, store.get(ann_id).corrected_output) == (2, "fixed again")
    exported = annotations.export_it(store, OPEN, "csv", "(all)", "(all)", "(all)", "", "", 1, 5)
    assert exported["export_file"].endswith(".csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\nnot json\n', encoding="utf-8")
    assert "Nothing imported" in annotations.import_it(store, OPEN, str(bad))["io_status"] and store.count() == 1
    asked = annotations.delete_it(store, OPEN, ann_id, None)   # the first press asks
    assert store.count() == 1 and asked["armed"] == ann_id and "Confirm delete?" in asked["status"]
    gone = annotations.delete_it(store, OPEN, ann_id, ann_id)
    assert store.count() == 0
    assert gone["deleted"] == ann_id                     # the id Undo restores
    kept = store.get(ann_id, include_deleted=True).to_dict()
    assert store.deleted_info(ann_id)[0]                 # a soft delete: still there, marked deleted
    annotations.undo_it(store, OPEN, ann_id)             # Undo puts the same record back
    assert store.get(ann_id).to_dict() == kept
    assert [v.action for v in store.history(ann_id)] == ["edit", "delete", "restore"]
    annotations.delete_it(store, OPEN, ann_id, ann_id)
    assert store.count() == 0

    # the batch queue (a job stored with its outputs, as after a run): save and move on
    job = create_job(store, [BatchInput("שלום"), BatchInput("日本")], task="summarization",
                     settings={"model_id": "demo", "family": "mt5", "decoding": {}})
    with store.transaction() as conn:
        conn.execute("UPDATE batch_rows SET output='out', processed_at='t' WHERE job_id=?", (job.id,))
    first = batch_tab.pick(store, OPEN, job.id)
    assert "0 of 2 done" in first["done"] and first["index"] == 0
    empty = batch_tab.save_next(store, OPEN, job.id, 0, None, "out", [], " ", "Amina")   # the output as it is
    assert "Not saved: the judgement is empty" in empty["status"] and job_progress(store, job.id).annotated == 0
    after = batch_tab.save_next(store, OPEN, job.id, 0, "5", "out!", [], "", "Amina")
    assert "1 of 2 done" in after["done"] and after["index"] == 1 and "Saved row 1" in after["status"]
    assert job_progress(store, job.id).annotated == 1
    assert batch_tab.move(store, OPEN, job.id, 1, where="prev")["index"] == 0
    assert "This is the first row" in batch_tab.move(store, OPEN, job.id, 0, where="prev")["status"]
    # leaving a row with a judgement not saved is refused, saying what would be lost; the saved one moves freely
    kept = batch_tab.move(store, OPEN, job.id, 1, "3", "", [], "too short", where="prev")
    assert "index" not in kept and "Row 2 has unsaved changes (rating, comment)" in kept["status"]
    assert batch_tab.move(store, OPEN, job.id, 0, "5", "out!", [], "", where="next")["index"] == 1
    assert batch_tab.move(store, OPEN, job.id, 1, None, "out", [], "", where="prev")["index"] == 0   # as output
    assert batch_tab.refresh_jobs(store, OPEN, job.id)["job"].value == job.id


def test_annotation_tabs_wire_their_handlers_by_name(store):
    """The page wires the module handlers: every name a handler returns is a component of its tab's layout."""
    import gradio as gr

    from app.annotation.rights import OPEN
    from app.annotation.tabs import annotations, panel
    from app.annotation.tabs.wiring import component, on_layout

    ctx = minimal_context()
    with gr.Blocks():
        tab = annotations.layout(ctx)
        with gr.Column():
            p = panel.layout(ctx, "summarization")
    shown = annotations.refresh_all(store, OPEN, "(all)", "(all)", "(all)", "", "", 1, 5)
    assert set(on_layout(tab, shown)) <= set(tab.refresh_outputs())
    fresh = panel.new_result(store, OPEN, RECORD, task="summarization")
    assert component(p, "editor.views.input") in on_layout(p, fresh)


def test_real_app_panels_and_a_real_batch_run(store, tmp_path):
    """The task tabs of app/main.py with the panel mounted, the two tabs and the endpoints wired as the report
    says, demo checkpoints; a batch of multilingual rows run through summarization and extractive QA."""
    from app.annotation.api import mount
    from app.annotation.batch import job_progress, job_rows, list_jobs
    from app.main import build_app, prepare
    from app.settings import Settings
    from app.annotation.tabs import annotations, batch_tab, panel as annotation_panel

    ctx, _ = prepare(True, Settings(demo_dir=tmp_path / "demo"))
    annotation_panel.register(ctx, store)
    app = build_app(ctx, "test", extra_tabs=[("Annotations", lambda c, h: annotations.build(c, store)),
                                             ("Batch", lambda c, h: (batch_tab.build(c, store), mount(store)))])
    assert all(h.record is not None for h in app.handles.values())
    names = {d.get("api_name") for d in app.blocks.get_config_file()["dependencies"]}
    assert {"annotate", "export", "summarize"} <= names

    from app.annotation.batch import StopRequests
    from app.annotation.rights import OPEN

    def create_and_run(*values):
        return batch_tab.create_and_run(store, OPEN, *values, ctx=ctx, stops=StopRequests())
    source = ctx.assets.models["summarization"].default
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n\"שלום עולם, זה טקסט\"\nDas ist ein Text.\n", encoding="utf-8")
    decoding = [8, 1, 0, 1.0, False, 1.0, 50, 1.0, 1.0, 0]   # decoding_controls() order, max_new_tokens=8
    out = create_and_run(str(texts), "summarization", source, "auto", "cpu", "none", *decoding)
    (job,) = list_jobs(store)
    assert job_progress(store, job.id).processed == 2, out
    assert job.settings["model_id"] == source and job.settings["decoding"]["max_new_tokens"] == 8
    assert all(isinstance(r.output, str) for r in job_rows(store, job.id))

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Who?", "context": "Ada wrote it."}) + "\n", encoding="utf-8")
    create_and_run(str(qa), "question_answering", ctx.assets.models["question_answering"].default, "auto", "cpu",
                   "none", *decoding)
    qa_job = next(j for j in list_jobs(store) if j.task == "question_answering")
    assert job_progress(store, qa_job.id).processed == 1
    refused = create_and_run(str(texts), "question_answering", "", "auto", "cpu", "none", *decoding)
    assert "question" in "".join(map(str, refused.values())) and len(list_jobs(store)) == 2


def test_demo_mode_shows_no_path_of_the_server(store, tmp_path):
    """Demo checkpoints go by short names ("demo/classification"): the page, the model box, the status line under
    a result and an exported annotation hold no path of the server's demo folder."""
    from app.annotation.api import export, save_from_record
    from app.main import build_app, prepare
    from app.settings import Settings

    demo_dir = tmp_path / "demo"
    ctx, reason = prepare(True, Settings(demo_dir=demo_dir))
    app = build_app(ctx, reason, store=store)
    handle = app.handles["classification"]
    assert handle.model.source.value == "demo/generation"   # rank classification with a text-to-text model
    page = json.dumps(app.blocks.get_config_file(), default=str)
    assert str(demo_dir) not in page and "demo/classification" in page

    # the tab's inputs: model box, preset, text, premise, hypothesis, labels, template, normalise
    out = handler(app.blocks, "run_classify")("", "auto", "cpu", "none", "sentiment", "Ada wrote the first program.",
                                              "", "", "positive, negative", "{text} Options: {choices}", False)
    status = out[handle.status]
    assert "demo/generation" in status and str(demo_dir) not in status, status
    save_from_record(store, out[handle.record], "4", "", [], "", "Amina")
    exported = export(store, "jsonl", folder=tmp_path / "export").read_text(encoding="utf-8")
    assert "demo/generation" in exported and str(demo_dir) not in exported
