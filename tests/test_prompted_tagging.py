"""Zero-shot token tagging (app.prompted_tagging): the pure steps on hand-written model outputs, the demo-mode
prompted path through the app functions and through /tag, bad input, the registry fields and decoding presets."""
import shutil

import pytest

from app.align import find_all
from app.assets import load_assets
from app.context import AppContext
from app.errors import UserError
from app.models import ModelCache, ModelRequest
from app.prompted_tagging import (METHOD, PromptedTagging, entities_from_bio, load_defaults, registry_preset,
                                  split_output, split_words, tag_checkpoint, tag_outputs, tag_prompted)
from app.settings import Settings
from app.tasklist import TASKS
from app.tasks import Decoding, Tagging, preset_decoding, ships_no_length
from model.tiny import build_demo_checkpoints

ASSETS = load_assets()


def check_consistent(text, entities, words, rejected, outputs):
    """Each returned string is tagged at offsets holding it, or rejected; BIO reads back as the entity spans."""
    for e in entities:
        assert text[e.start:e.end] == e.text and 0 <= e.start < e.end <= len(text)
    assert all(a.end <= b.start for a, b in zip(entities, entities[1:]))        # no overlaps, left to right
    for type_, out in outputs.items():
        for s in split_output(out):
            found = any(e.label == type_ and [(m.start, m.end) for m in find_all(e.text, s)][:1] == [(0, len(e.text))]
                        for e in entities)   # an entity of this type whose whole text is this string
            refused = [r for r in rejected if r.text == s and r.type == type_]
            assert found != bool(refused), (type_, s)       # tagged somewhere, or rejected: never both
            if refused and refused[0].reason == "not in the text":
                assert find_all(text, s) == []
    # the words covering each entity, read back from the BIO tags
    expected = []
    for e in entities:
        covering = [w for w in words if w["start"] < e.end and e.start < w["end"]]
        expected.append((covering[0]["start"], covering[-1]["end"], e.label))
    assert entities_from_bio(words) == expected


# --- pure steps -----------------------------------------------------------------------------------------------
def test_split_output_on_commas_semicolons_newlines_stripped_and_deduped():
    assert split_output(' Angela Merkel, "Macron";merkel\nParis. ,, U.S.') == [
        "Angela Merkel", "Macron", "merkel", "Paris", "U.S."]
    assert split_output("Angela Merkel, Macron, ANGELA MERKEL") == ["Angela Merkel", "Macron"]
    assert split_output("习近平，普京、北京") == ["习近平", "普京", "北京"]
    assert split_output("محمد، أحمد") == ["محمد", "أحمد"]
    assert split_output("") == [] and split_output(" , ;\n") == []


def test_english_bio_and_rejected():
    text = "Angela Merkel met Emmanuel Macron in Paris on 3 May 2019. Merkel left Paris."
    outputs = {"person": "Angela Merkel, Merkel, Emmanuel Macron, Bob", "location": "Paris.", "date": "3 May 2019"}
    entities, how, words, rejected = tag_outputs(text, outputs)
    assert [(e.text, e.label) for e in entities] == [
        ("Angela Merkel", "person"), ("Emmanuel Macron", "person"), ("Paris", "location"), ("3 May 2019", "date"),
        ("Merkel", "person"), ("Paris", "location")]
    assert set(how) == {"exact"}
    assert [(r.text, r.type, r.reason) for r in rejected] == [("Bob", "person", "not in the text")]
    labels = {w["text"]: w["label"] for w in words[:4]}
    assert labels == {"Angela": "B-person", "Merkel": "I-person", "met": "O", "Emmanuel": "B-person"}
    check_consistent(text, entities, words, rejected, outputs)


def test_chinese_every_character_a_word():
    text = "习近平在北京会见了普京。"
    outputs = {"person": "习近平，普京", "location": "北京、上海"}
    entities, _, words, rejected = tag_outputs(text, outputs)
    assert [(e.start, e.end, e.label) for e in entities] == [(0, 3, "person"), (4, 6, "location"), (9, 11, "person")]
    assert len(words) == len(text) and [w["label"] for w in words[:4]] == ["B-person", "I-person", "I-person", "O"]
    assert [(r.text, r.reason) for r in rejected] == [("上海", "not in the text")]
    check_consistent(text, entities, words, rejected, outputs)


def test_japanese_mixed_scripts():
    text = "山田太郎はトヨタ自動車で働いています。"
    outputs = {"person": "山田太郎", "organisation": "トヨタ自動車"}
    entities, _, words, rejected = tag_outputs(text, outputs)
    assert [text[e.start:e.end] for e in entities] == ["山田太郎", "トヨタ自動車"] and not rejected
    assert words[4]["text"] == "は" and words[4]["label"] == "O" and words[5]["label"] == "B-organisation"
    check_consistent(text, entities, words, rejected, outputs)


def test_arabic_logical_offsets():
    text = "زار محمد بن سلمان القاهرة ثم عاد محمد إلى الرياض"
    outputs = {"person": "محمد بن سلمان", "location": "القاهرة، الرياض، دبي"}
    entities, _, words, rejected = tag_outputs(text, outputs)
    assert [e.text for e in entities] == ["محمد بن سلمان", "القاهرة", "الرياض"]
    assert [w["label"] for w in words[1:5]] == ["B-person", "I-person", "I-person", "B-location"]
    assert [r.text for r in rejected] == ["دبي"]
    check_consistent(text, entities, words, rejected, outputs)


def test_repeated_strings_all_tagged_and_overlaps_first_longest_wins():
    text = "Paris Hilton loves Paris. New York, York and Paris."
    outputs = {"person": "Paris Hilton", "location": "Paris, New York, York"}
    entities, _, words, rejected = tag_outputs(text, outputs)
    assert [(e.text, e.label, e.start) for e in entities] == [
        ("Paris Hilton", "person", 0), ("Paris", "location", 19), ("New York", "location", 26),
        ("York", "location", 36), ("Paris", "location", 45)]
    assert rejected == []      # every string has at least one occurrence tagged
    check_consistent(text, entities, words, rejected, outputs)
    _, _, _, lost = tag_outputs("New York", {"location": "New York, York"})
    assert [(r.text, r.reason) for r in lost] == [("York", "overlaps location 'New York'")]


def test_normalized_matches_and_words():
    text = "Ｔｏｋｙｏ and the UNITED NATIONS."
    entities, how, _, _ = tag_outputs(text, {"location": "tokyo", "organisation": "United Nations"})
    assert [text[e.start:e.end] for e in entities] == ["Ｔｏｋｙｏ", "UNITED NATIONS"]
    assert how == ["normalized", "normalized"]
    assert split_words(" a  bc\td ") == [(1, 2), (4, 6), (7, 8)]


# --- demo mode: the app functions -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    paths = build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())
    return AppContext.create(Settings(), ASSETS.with_demo_models(paths), demo=True)


def test_the_checkpoint_decides_head_or_prompt(ctx):
    assert ctx.head_for("tagging", "demo/generation") == "generation"
    assert ctx.head_for("tagging", "demo/token-classification") == "token-classification"
    head = tag_checkpoint(ctx.load("tagging", "demo/token-classification"), "Ada lives in Paris.")
    assert isinstance(head, Tagging)


@pytest.mark.parametrize("row", ASSETS.examples["tagging"], ids=[r["lang"] for r in ASSETS.examples["tagging"]])
def test_prompted_path_mechanics_on_random_weights(ctx, row):
    loaded = ctx.load("tagging", "demo/generation")
    result = tag_checkpoint(loaded, row["text"], "person, location", None)
    assert isinstance(result, PromptedTagging) and result.method == METHOD
    assert list(result.outputs) == ["person", "location"] and set(result.prompts) == {"person", "location"}
    assert all(row["text"] in p or result.truncated for p in result.prompts.values())
    assert "".join(t for t, _ in result.segments) == row["text"]
    check_consistent(row["text"], result.entities, result.words, result.rejected, result.outputs)
    assert result.settings["num_beams"] == 1 and result.settings["do_sample"] is False


def test_task_table_run_uses_the_prompt_with_default_types(ctx):
    result = TASKS["tagging"].run(ctx.load("tagging", "demo/generation"), {"text": "Ada lives in Paris."},
                                  Decoding())
    assert list(result.outputs) == list(load_defaults().types)


@pytest.mark.parametrize("types,template,message", [
    ("", None, "No entity types given"),
    (" , ", None, "No entity types given"),
    ("person", "List the {type} names:", "has no {text} placeholder"),
    ("person", "{text}\nList the names:", "has no {type} placeholder"),
    ("person", "  ", "The prompt template is empty"),
    (", ".join(f"t{i}" for i in range(20)), None, "20 entity types given; at most 12"),
])
def test_bad_input_messages(ctx, types, template, message):
    loaded = ctx.load("tagging", "demo/generation")
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
        tag_checkpoint(loaded, "Ada lives in Paris.", types, template)


def test_one_cache_entry_serves_classification_and_tagging(ctx):
    assert ctx.load("classification", "demo/generation") is ctx.load("tagging", "demo/generation")


# --- registry and decoding presets ----------------------------------------------------------------------------
def test_registry_fields_for_every_task():
    for name, entry in load_assets().models.items():
        assert entry.licence and entry.size and entry.languages and entry.approach, name
        assert entry.facts().startswith(f"Default {entry.default}: ")
    models = load_assets().models
    assert models["summarization"].default == "csebuetnlp/mT5_multilingual_XLSum"
    assert "CC BY-NC-SA 4.0" in models["summarization"].licence
    assert "bigscience/mt0-base" in models["summarization"].suggestions
    assert models["span_filling"].default == "google/mt5-small" and models["span_filling"].licence == "Apache-2.0"
    assert models["tagging"].default == "bigscience/mt0-base" and models["tagging"].head == "generation"
    assert registry_preset() == {"max_new_tokens": 64}


def test_mt0_preset_applies_only_without_decoding_defaults(ctx, tmp_path):
    # a demo generation checkpoint without generation_config.json is shaped as mT0 ships
    folder = tmp_path / "no-generation-config"
    shutil.copytree(ctx.assets.folders["demo/generation"], folder)
    (folder / "generation_config.json").unlink()
    bare = ModelCache().get(ModelRequest(str(folder), "generation"))
    assert ships_no_length(bare.model.generation_config)
    assert preset_decoding(bare.model.generation_config, {"max_new_tokens": 64}).max_new_tokens == 64
    result = tag_prompted(bare, "Ada lives in Paris.", "person", load_defaults().template)
    assert result.settings["max_new_tokens"] == 64
    own = ctx.load("tagging", "demo/generation")       # ships max_new_tokens 24: its own default is kept
    assert not ships_no_length(own.model.generation_config)
    assert preset_decoding(own.model.generation_config, {"max_new_tokens": 64}) == Decoding()


# --- through the real server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(demo_client):
    return demo_client  # the session's demo server (tests/conftest.py)


def test_tag_api_prompted_path(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/tag"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names[:5] == ["text", "model", "dtype", "device", "quantization"]
    assert {"entity_types", "template"} <= set(names)
    text = "Angela Merkel besuchte Paris. 習近平は北京にいる。"
    result = client.predict(text, model="demo/generation", entity_types="person, location", api_name="/tag")
    assert result["source"] == "prompt" and result["method"] == METHOD
    assert list(result["outputs"]) == ["person", "location"]
    for e in result["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and e["source"] == "prompt"
    for r in result["rejected"]:
        assert set(r) == {"text", "type", "reason"}
    head = client.predict(text, api_name="/tag")
    assert head["source"] == "head" and head["rejected"] == []
    assert all(e["source"] == "head" for e in head["entities"])


def test_tag_api_bad_input(client):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="has no {type} placeholder"):
        client.predict("Some text.", model="demo/generation", template="{text} names?", api_name="/tag")
