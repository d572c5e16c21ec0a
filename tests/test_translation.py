"""The Translation task without a server: target languages, MADLAD's `<2xx>` tokens and mT0's prompt, on the demo
checkpoints (a MADLAD-400-shaped T5 with pad 1, eos 2 and a `<2xx>` token per language of assets/languages.json)."""
import dataclasses
import json

import pytest

from app import cli, translation
from app.assets import load_assets
from app.errors import UserError
from app.models import ModelCache, ModelRequest
from app.tasklist import JOB_TASKS, TASKS, check_registry
from app.tasks import Decoding, MAX_INPUT_TOKENS
from model import MT5Tokenizer
from model.tiny import build_demo_checkpoints, train_madlad_style, write_madlad_style

ASSETS = load_assets()
CODES = [lang.code for lang in translation.languages()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts(), languages=CODES)


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def loaded(cache, demo, name):
    return cache.get(ModelRequest(str(demo[name]), "generation"))


def test_languages_are_found_by_name_or_code_in_any_case():
    assert translation.language_named("German").code == "de"
    assert translation.language_named("  swahili ").code == "sw"
    assert translation.language_named("ZH").name == "Chinese"
    assert translation.language_named("yue").token == "<2yue>"
    with pytest.raises(UserError, match="Unknown target language 'Klingon': pick one from the list"):
        translation.language_named("Klingon")
    with pytest.raises(UserError, match="Pick a target language"):
        translation.language_named("  ")
    names = [lang.name for lang in translation.languages()]
    assert names == sorted(names) and len(set(CODES)) == len(CODES) > 100


def test_the_demo_checkpoint_is_madlad_shaped(demo):
    config = json.loads((demo["translation"] / "config.json").read_text())
    assert config["model_type"] == "t5" and config["architectures"] == ["T5ForConditionalGeneration"]
    assert (config["pad_token_id"], config["eos_token_id"], config["decoder_start_token_id"]) == (1, 2, 0)
    assert config["feed_forward_proj"] == "gated-gelu" and config["tie_word_embeddings"] is False
    tok = MT5Tokenizer.from_pretrained(demo["translation"])
    ids = tok("<2sw> Habari").input_ids
    assert tok.convert_tokens_to_ids("<2sw>") in ids and ids[-1] == 2
    assert all(translation.token_id(tok, f"<2{code}>") is not None for code in CODES)


def test_madlad_reads_its_language_token_and_streams_what_generate_gives(demo, cache):
    model = loaded(cache, demo, "translation")
    text = "The library opens at nine."
    parts = list(translation.stream_translation(model, text, "German", Decoding(max_new_tokens=8)))
    last = parts[-1]
    assert last.done and not any(p.done for p in parts[:-1])
    assert (last.prompt, last.method, last.code, last.target) == (f"<2de> {text}", "<2de> token", "de", "German")
    assert all(last.text.startswith(p.text) for p in parts)
    enc = model.tokenizer(last.prompt, return_tensors="pt")
    out = model.model.generate(**enc, max_new_tokens=8)
    assert last.text == model.tokenizer.decode(out[0], skip_special_tokens=True)
    assert last.input_tokens == enc.input_ids.shape[1] and not last.truncated


def test_a_prompted_model_is_asked_in_words(demo, cache):
    model = loaded(cache, demo, "generation")   # an mT5 vocabulary: no <2xx> tokens
    *_, last = translation.stream_translation(model, "Guten Morgen", "fr", Decoding(max_new_tokens=4))
    assert (last.prompt, last.method, last.target) == ("Translate to French: Guten Morgen", "prompt", "French")


def test_a_language_the_model_has_no_token_for_is_refused_before_it_runs(demo, cache, tmp_path):
    model = loaded(cache, demo, "translation")
    small = write_madlad_style(tmp_path / "tok", train_madlad_style(["hello world"] * 20, ["en", "de"], 300))
    narrow = dataclasses.replace(model, tokenizer=MT5Tokenizer.from_pretrained(small))
    with pytest.raises(UserError, match=r"has no <2fr> token: it does not translate into French"):
        next(translation.stream_translation(narrow, "hello", "French", Decoding()))
    *_, last = translation.stream_translation(narrow, "hello", "German", Decoding(max_new_tokens=2))
    assert last.prompt == "<2de> hello"


def test_empty_text_and_overlong_text(demo, cache):
    model = loaded(cache, demo, "translation")
    with pytest.raises(UserError, match="empty"):
        next(translation.stream_translation(model, "   ", "German", Decoding()))
    *_, last = translation.stream_translation(model, "word " * 3000, "German", Decoding(max_new_tokens=2))
    assert last.truncated and last.input_tokens == MAX_INPUT_TOKENS


def test_checkpoint_defaults_apply_when_no_setting_is_given(demo, cache):
    model = loaded(cache, demo, "translation")   # the demo ships max_new_tokens 24
    *_, last = translation.stream_translation(model, "Hello there", "German", Decoding())
    assert last.settings == {}
    out = model.model.generate(**model.tokenizer(last.prompt, return_tensors="pt"))
    assert out.shape[1] == 1 + 24 and model.model.generation_config.max_new_tokens == 24
    assert last.text == model.tokenizer.decode(out[0], skip_special_tokens=True)


def test_task_row_and_registry():
    spec = TASKS["translation"]
    assert spec.fields == ("text", "target") and spec.decodes and spec.streams and not spec.jobs
    assert "translation" not in JOB_TASKS and "summarization" in JOB_TASKS
    assert spec.input_text({"text": "Hallo", "target": "English"}) == "Hallo"
    assert spec.missing({"text": "Hallo"}) == ["target"]
    entry = ASSETS.models["translation"]
    assert entry.default == "google/madlad400-3b-mt" and entry.quantization == "int8-all"
    assert "bigscience/mt0-base" in entry.suggestions and "Apache-2.0" in entry.facts()
    assert "int4-small 1.5 GiB" in entry.facts() and "fp32 11.0 GiB" in entry.facts()
    bad = dataclasses.replace(ASSETS, models={**ASSETS.models, "translation": dataclasses.replace(
        entry, quantization="int3")})
    with pytest.raises(ValueError, match="starts with quantization 'int3': use one of none"):
        check_registry(bad)


def test_demo_models_start_unquantized(demo):
    demo_assets = ASSETS.with_demo_models(demo)
    assert demo_assets.models["translation"].default == "demo/translation"
    assert demo_assets.models["translation"].quantization == "none"


def test_batch_command_refuses_translation(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "Hallo"}\n')
    args = cli.parse_args(["batch", "--model", "x", "--task", "translation", "--input", str(rows),
                           "--output", str(tmp_path / "out.jsonl")])
    with pytest.raises(ValueError, match="translation runs in its tab and its API endpoint only"):
        cli.batch(args)


def test_attention_reads_the_prompt_and_the_translation():
    result = translation.Translation("Hallo", "German", "de", "<2de> Hello", "<2de> token", False, 4, {})
    what = TASKS["translation"].attention({"text": "Hello", "target": "German"}, result)
    assert (what.source, what.target) == ("<2de> Hello", "Hallo")
