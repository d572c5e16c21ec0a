"""The app's task functions, model cache and attention panel logic, without Gradio, on the demo checkpoints."""
import json
import shutil
import threading
import time
import unicodedata

import pytest
import torch

from app.annotation.api import dtype_label
from app.assets import load_assets
from app.attention import AttentionInput, capture, render_html, select
from app.errors import UserError
from app.models import Loaded, ModelCache, ModelPolicy, ModelRequest, load_checkpoint, read_generation_config
from app.settings import Settings
from app import answering, tasks
from model.tiny import DEMO_CLASS_LABELS, DEMO_TAG_LABELS, build_demo_checkpoints, tiny_model

ASSETS = load_assets()
EX = ASSETS.examples


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def get(cache, demo, name, head=None):
    return cache.get(ModelRequest(str(demo[name]), head or name))


# --- assets -------------------------------------------------------------------------------------------------
def test_every_task_has_examples_in_six_languages_with_rtl_and_non_latin_scripts():
    for task, rows in EX.items():
        assert len({r["lang"] for r in rows}) >= 6, task
        texts = [r.get("text") or r["context"] for r in rows]
        assert any(tasks.is_rtl(t) for t in texts), task
        scripts = {unicodedata.name(c).split()[0] for t in texts for c in t if c.isalpha()}
        assert len(scripts - {"LATIN"}) >= 3, (task, scripts)


def test_registry_names_a_default_for_every_task():
    assert ASSETS.models["summarization"].default == "csebuetnlp/mT5_multilingual_XLSum"
    assert ASSETS.models["span_filling"].default == "google/mt5-small"
    assert ASSETS.models["classification"].default == "bigscience/mt0-base"   # rank classification
    assert ASSETS.models["tagging"].default == "bigscience/mt0-base"           # zero-shot tagging (prompted)
    assert {e.head for e in ASSETS.models.values()} == {"generation", "question-answering"}


def test_demo_checkpoints_are_reused_when_built_from_the_same_texts(demo):
    folder = demo["generation"].parent
    stamps = {f: f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()}
    again = build_demo_checkpoints(folder, ASSETS.example_texts())
    assert again == demo
    assert {f: f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()} == stamps  # nothing rewritten


def test_settings_from_environment():
    s = Settings.from_env({"MT5_STUDIO_ALLOWED_MODELS": "a/b, c/d", "MT5_STUDIO_CACHE_MODELS": "2",
                           "MT5_STUDIO_CACHE_MB": "100"})
    assert s.locked and s.allowed_models == ["a/b", "c/d"] and s.cache_models == 2 and s.cache_bytes == 100 * 2**20
    assert not Settings.from_env({}).locked
    assert Settings.from_env({"MT5_STUDIO_LOCKED": "1"}).locked


# --- summarization ------------------------------------------------------------------------------------------
def test_decoding_defaults_come_from_the_checkpoint(demo, cache):
    defaults = tasks.Decoding.from_config(read_generation_config(str(demo["generation"])))
    assert defaults.max_new_tokens == 24 and defaults.no_repeat_ngram_size == 3 and defaults.num_beams == 1
    assert tasks.Decoding.defaults_of(get(cache, demo, "generation").model) == defaults


def test_summary_streams_and_ends_done(demo, cache):
    loaded = get(cache, demo, "generation")
    steps = list(tasks.stream_summary(loaded, EX["summarization"][0]["text"], tasks.Decoding(max_new_tokens=12)))
    assert steps[-1].done and not any(s.done for s in steps[:-1])
    assert all(b.text.startswith(a.text) for a, b in zip(steps, steps[1:]))
    assert steps[-1].settings == {"max_new_tokens": 12}
    beams = list(tasks.stream_summary(loaded, "Hello world", tasks.Decoding(num_beams=2, max_new_tokens=5)))
    assert beams[-1].done


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_refused(demo, cache, text):
    with pytest.raises(UserError, match="empty"):
        list(tasks.stream_summary(get(cache, demo, "generation"), text, tasks.Decoding()))


def test_very_long_text_is_cut_and_flagged(demo, cache):
    text = "word " * 40_000   # 200k characters
    start = time.perf_counter()
    *_, last = tasks.stream_summary(get(cache, demo, "generation"), text, tasks.Decoding(max_new_tokens=4))
    assert last.truncated and last.input_tokens == tasks.MAX_INPUT_TOKENS and time.perf_counter() - start < 10


def test_invalid_decoding_settings_are_a_user_error(demo, cache):
    with pytest.raises(UserError, match="Invalid decoding settings"):
        tasks.fill(get(cache, demo, "generation"), "a <extra_id_0> b", tasks.Decoding(do_sample=True,
                                                                                      temperature=-1.0))


# --- span filling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["span-filling", "span-filling-umt5"])
def test_spans_come_back_with_their_sentinels_and_offsets(demo, cache, name):
    loaded = cache.get(ModelRequest(str(demo[name]), "generation"))
    for row in EX["span_filling"]:
        result = tasks.fill(loaded, row["text"], tasks.Decoding())
        markers = [m.group(0) for m in tasks.MARKER.finditer(row["text"])]
        assert [s["marker"] for s in result.spans] == markers
        for span in result.spans:
            assert span["sentinel_id"] == loaded.tokenizer.sentinel_id(int(span["marker"][10:-1]))
            assert result.text[span["start"]: span["end"]] == span["text"]
        labels = [label for _, label in result.segments if label]
        assert [label.split()[0] for label in labels] == markers
        assert "".join(t for t, label in result.segments if not label) == tasks.MARKER.sub("", row["text"])


def test_text_without_markers_is_refused(demo, cache):
    with pytest.raises(UserError, match="no <extra_id_N> marker"):
        tasks.fill(get(cache, demo, "generation"), "no markers here", tasks.Decoding())


def test_marker_beyond_the_tokenizer_is_refused(demo, cache):
    with pytest.raises(UserError, match="Cannot fill"):
        tasks.fill(get(cache, demo, "generation"), "a <extra_id_150> b", tasks.Decoding())


def test_next_marker():
    assert tasks.next_marker("") == "<extra_id_0>"
    assert tasks.next_marker("a <extra_id_0> b <extra_id_3>") == "<extra_id_4>"


# --- classification and tagging ---------------------------------------------------------------------------------
def test_classification_probabilities_use_id2label(demo, cache):
    result = tasks.classify(get(cache, demo, "classification"), EX["classification"][3]["text"])
    assert set(result.probabilities) == set(DEMO_CLASS_LABELS)
    assert abs(sum(result.probabilities.values()) - 1) < 1e-5
    assert result.label == next(iter(result.probabilities))


def test_tagging_offsets_lie_inside_the_input(demo, cache):
    loaded = get(cache, demo, "token-classification")
    for row in EX["tagging"]:
        result = tasks.tag(loaded, row["text"])
        assert result.words
        for item in result.words + [vars(e) for e in result.entities]:
            assert 0 <= item["start"] < item["end"] <= len(row["text"])
            assert row["text"][item["start"]: item["end"]] == item["text"] == item["text"].strip()
        assert {w["label"] for w in result.words} <= set(DEMO_TAG_LABELS)
        assert "".join(t for t, _ in result.segments) == row["text"]
        assert result.rtl == (row["lang"] == "ar")


def test_words_merge_pieces_and_split_unspaced_scripts(demo, cache):
    tok = get(cache, demo, "token-classification").tokenizer
    for text, expected in [("Angela Merkel, Berlin.", ["Angela", "Merkel", ",", "Berlin", "."]),
                           ("马云在杭州", ["马", "云", "在", "杭", "州"])]:
        offsets = [tuple(o) for o in tok(text, return_offsets_mapping=True)["offset_mapping"]]
        words = [text[offsets[g[0]][0]: offsets[g[-1]][1]].strip() for g in tasks.group_words(text, offsets)]
        assert words == expected


def test_bio_labels_merge_into_entities():
    text = "Angela Merkel met Macron in Berlin"
    spans = [(0, 6, "B-PER"), (7, 13, "I-PER"), (14, 17, "O"), (18, 24, "B-PER"), (25, 27, "O"), (28, 34, "B-LOC")]
    words = [{"text": text[s:e], "label": label, "score": 0.5, "start": s, "end": e} for s, e, label in spans]
    entities = tasks.merge_entities(text, words)
    assert [(e.text, e.label) for e in entities] == [("Angela Merkel", "PER"), ("Macron", "PER"), ("Berlin", "LOC")]


# --- question answering ------------------------------------------------------------------------------------------
def test_extractive_answer_is_a_span_of_the_context(demo, cache):
    loaded = get(cache, demo, "question-answering")
    for row in EX["question_answering"]:
        result = tasks.answer_extractive(loaded, row["question"], row["context"], top_k=4)
        answers = [result.answer] + result.alternatives
        assert len(answers) == 4 and all(a.score >= b.score for a, b in zip(answers, answers[1:]))
        for a in answers:
            assert row["context"][a.start: a.end] == a.text and a.text
        assert any(label for _, label in result.segments)


def test_generative_answer(demo, cache):
    result = answering.answer_generative(get(cache, demo, "generation"), "Where?", "In Kenya.",
                                         tasks.Decoding(max_new_tokens=5))
    assert result.mode == "generative" and isinstance(result.answer.text, str)


@pytest.mark.parametrize("question,context,match", [("Where?", "", "no context"), ("", "Some text.", "question")])
def test_question_without_context_is_refused(demo, cache, question, context, match):
    with pytest.raises(UserError, match=match):
        tasks.answer_extractive(get(cache, demo, "question-answering"), question, context)


def test_wrong_head_for_the_task_is_refused(demo, cache):
    with pytest.raises(UserError, match="classification head"):
        tasks.classify(get(cache, demo, "generation"), "text")


# --- attention ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kinds", [("generation", ("encoder", "decoder", "cross")),
                                        ("classification", ("encoder", "decoder", "cross")),
                                        ("token-classification", ("encoder",)),
                                        ("question-answering", ("encoder", "decoder", "cross"))])
def test_attention_of_every_head(demo, cache, name, kinds):
    head = "generation" if name == "generation" else name
    loaded = cache.get(ModelRequest(str(demo[name]), head))
    what = AttentionInput("Angela Merkel met Emmanuel Macron in Berlin.",
                          question="Who?" if name == "question-answering" else None,
                          target="Merkel <extra_id_0>" if name == "generation" else None)
    maps = capture(loaded, what)
    for kind in kinds:
        view = select(maps, kind, -1, "mean")
        assert view.weights.shape == (len(view.queries), len(view.keys))
        assert abs(view.weights.sum(-1) - 1).max() < 1e-4   # each query's weights sum to 1
        one = select(maps, kind, 0, "1")
        assert one.head == "1" and one.layer == 0
    if name == "question-answering":
        assert "▁Who" in maps.source_tokens[0] or maps.source_tokens[0].startswith("▁")
        assert maps.source_tokens.count("</s>") == 2   # question and context, as the QA head saw them
    if "decoder" not in kinds:
        with pytest.raises(UserError, match="no decoder self-attention"):
            select(maps, "decoder")


def test_attention_bad_layer_or_head(demo, cache):
    maps = capture(get(cache, demo, "generation"), AttentionInput("Hello world", target="Hi"))
    with pytest.raises(UserError, match="Layer 9"):
        select(maps, "encoder", 9)
    with pytest.raises(UserError, match="Head"):
        select(maps, "encoder", 0, "17")


def test_heatmap_html_windows_long_inputs():
    from app.attention import HeatmapView
    import numpy as np

    n = 300
    weights = np.full((n, n), 1 / n, dtype=np.float32)
    tokens = [f"▁t{i}" for i in range(n - 1)] + ["<b>&"]
    view = HeatmapView("encoder", 0, "mean", 2, 4, weights, tokens, tokens)
    html = render_html(view, row_start=290, col_start=0, window=20)
    assert html.count('<tr><th class="attn-row"') == 20
    assert "queries 280–299 of 300" in html                                 # the window clamped to the end
    assert "&lt;b&gt;&amp;" in html and "<b>&" not in html                  # tokens are escaped
    assert 'title="▁t280 → ▁t0: 0.0033"' in html


def test_attention_panel_clears_the_map_on_a_new_result():
    """A new result (another text, another checkpoint) must not leave the previous result's map on show."""
    from types import SimpleNamespace
    import gradio as gr
    from app.tabs import attention_panel

    with gr.Blocks() as blocks:
        handle = SimpleNamespace(record=gr.State())
        panel = attention_panel.build(None, handle)
    resets = [f for f in blocks.fns.values() if (handle.record._id, "change") in f.targets]
    assert len(resets) == 1 and resets[0].queue is False                 # off the queue, like the annotation panel
    reset = resets[0]
    assert panel["heatmap"] in reset.outputs
    record = {"task": "tag", "model": {"checkpoint": "other"}, "attention": {"text": "A different text."}}
    for new in (record, None):
        out = reset.fn(new)
        assert out[panel["heatmap"]] == "" and all(v == "" for v in out.values())


# --- loading and the cache ------------------------------------------------------------------------------------------
def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Could not find the checkpoint 'nobody/no-such-model'"):
        load_checkpoint(ModelRequest("nobody/no-such-model"))


def test_missing_local_folder():
    with pytest.raises(UserError, match="Could not find"):
        load_checkpoint(ModelRequest("/no/such/folder"))


def test_non_t5_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(UserError, match="not an mT5/UMT5 model"):
        load_checkpoint(ModelRequest(str(tmp_path)))


def test_corrupt_checkpoint(demo, tmp_path):
    for f in demo["classification"].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="damaged or incomplete"):
        load_checkpoint(ModelRequest(str(tmp_path), "classification"))


@pytest.mark.parametrize("head,what", [("classification", "classification head"),
                                       ("token-classification", "token-classification head"),
                                       ("question-answering", "question-answering head")])
def test_checkpoint_without_the_head_is_refused(demo, head, what):
    with pytest.raises(UserError, match=f"this checkpoint has no {what}"):
        load_checkpoint(ModelRequest(str(demo["generation"]), head))


def test_bad_options_are_user_errors(demo):
    with pytest.raises(UserError, match="dtype"):
        load_checkpoint(ModelRequest(str(demo["generation"]), dtype="float8"))
    with pytest.raises(UserError, match="No model"):
        load_checkpoint(ModelRequest("  "))


def test_dtype_and_int4_options_reach_the_model_layer(demo, tmp_path):
    loaded = load_checkpoint(ModelRequest(str(demo["generation"]), dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16 and loaded.provenance()["loaded_dtype"] == "bfloat16"
    from model.quant import Int4Linear, Int8Embedding, Int8Linear

    q = load_checkpoint(ModelRequest(str(demo["generation"]), quantization="int4"))
    assert type(q.model.encoder.block[0].layer[0].SelfAttention.q) is Int4Linear
    q8 = load_checkpoint(ModelRequest(str(demo["generation"]), quantization="int8-all"))
    assert type(q8.model.shared) is Int8Embedding and type(q8.model.lm_head) is Int8Linear
    assert q8.provenance()["quantization"] == "int8-all"
    line = q8.describe()   # the line under every result
    assert line.startswith("generation · mt5 · ") and "of weights on cpu (embeddings" in line
    assert line.endswith("float32 · 8-bit int8, layers + embeddings") and "parameters" not in line
    assert f"{loaded.model.num_parameters() / 1e6:.1f}M parameters" in loaded.describe()
    # a checkpoint saved quantized loads as it is, and says so (status line and annotations)
    folder = tmp_path / "generation-int8"
    shutil.copytree(demo["generation"], folder)   # the tokenizer files, then the int8 weights over the fp32 ones
    q8.model.save_pretrained(folder)
    saved = load_checkpoint(ModelRequest(str(folder)))
    assert saved.provenance()["quantization"] == "int8 (checkpoint)"
    assert saved.describe().endswith("8-bit int8 (checkpoint)") and "parameters" not in saved.describe()
    assert dtype_label(saved.provenance()) == "float32, 8-bit int8 (checkpoint)"
    with pytest.raises(UserError, match="is already quantized: set 'Quantized weights' to none"):
        load_checkpoint(ModelRequest(str(folder), quantization="int4"))
    with pytest.raises(UserError, match="Unknown quantization 'int3': use one of none, nf4, fp4, int4, int4-all"):
        load_checkpoint(ModelRequest(str(demo["generation"]), quantization="int3"))


def fake_loader(sizes: dict, calls: list):
    def load(request, progress=None):
        calls.append(request.source)
        time.sleep(0.05)
        return Loaded(request, None, None, "mt5", sizes.get(request.source, 10))
    return load


def test_cache_evicts_least_recently_used_by_count_and_bytes():
    calls = []
    cache = ModelCache(max_models=2, max_bytes=100, loader=fake_loader({"big": 80}, calls))
    cache.get(ModelRequest("a"))
    cache.get(ModelRequest("b"))
    cache.get(ModelRequest("a"))            # a is now the most recent
    cache.get(ModelRequest("c"))            # evicts b
    assert cache.loaded() == ["a (generation)", "c (generation)"]
    cache.get(ModelRequest("big"))          # 10 + 80 + 10 > 100: evicts a, then c fits? 90 <= 100 keeps c
    assert cache.loaded() == ["c (generation)", "big (generation)"] and cache.nbytes() == 90
    assert calls == ["a", "b", "c", "big"]


def test_cache_loads_a_model_once_under_concurrent_requests():
    calls = []
    cache = ModelCache(loader=fake_loader({}, calls))
    threads = [threading.Thread(target=cache.get, args=(ModelRequest("same"),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["same"]


def test_locked_deployment_refuses_other_models():
    cache = ModelCache(policy=ModelPolicy(True, frozenset({"google/mt5-small"})), loader=fake_loader({}, []))
    cache.get(ModelRequest("google/mt5-small"))
    with pytest.raises(UserError, match="only serves its listed models"):
        cache.get(ModelRequest("someone/huge-model"))


def test_tiny_model_builds_every_family_and_head():
    for family in ("mt5", "umt5"):
        for task in ("generation", "classification", "token-classification", "question-answering"):
            assert tiny_model(family, task, 400).config.model_type == family


def test_rtl_detection():
    assert tasks.is_rtl("مرحبا بالعالم") and tasks.is_rtl("שלום עולם")
    assert not tasks.is_rtl("Hello مرحبا world again") and not tasks.is_rtl("")


# --- app start-up ---------------------------------------------------------------------------------------------------
def test_offline_without_cache_falls_back_to_demo_mode_and_locking_keeps_the_defaults(tmp_path, monkeypatch):
    from app.main import build_app, prepare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MT5_STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("MT5_STUDIO_LOCKED", "1")
    ctx, reason = prepare(demo_flag=False)
    assert ctx.demo and "cannot be reached" in reason and ctx.settings.offline and ctx.cache.offline
    default = ctx.assets.models["classification"].default
    assert default == "demo/generation"   # a short name; the folder stays on the server
    assert "demo/classification" in ctx.assets.models["classification"].suggestions   # the head path too
    assert ctx.assets.folders[default].parent == tmp_path / "demo"
    assert ctx.load("classification", "").request.source == default      # allowed: a registry entry
    with pytest.raises(UserError, match="only serves its listed models"):
        ctx.load("classification", "someone/another-model")
    app = build_app(ctx, reason)
    assert set(app.handles) == {"summarization", "translation", "span_filling", "classification", "tagging",
                                "question_answering"}
    for handle in app.handles.values():   # what the annotation panel reads
        assert handle.inputs and handle.outputs and handle.record is not None and handle.slot is not None
