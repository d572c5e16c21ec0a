"""MT5TokenizerFast (tokenizer.json on the `tokenizers` library) against transformers 4.57's `T5TokenizerFast`.

Folders: `mt5` / `umt5` hold spiece.model and json files as the Hub has them (tests/reference/spm_util.py).
The reference converts each with transformers into `*_both` (tokenizer.json beside spiece.model, what a
transformers 4.x fine-tune ships) and `*_json` (the same without spiece.model, what transformers 5 saves), then
runs `T5TokenizerFast` on the `*_json` folders. One reference run serves the whole module.
"""
import json
import shutil
import warnings

import pytest

from model.tokenizer import MT5Tokenizer, MT5TokenizerFast
from reference.spm_util import train_model, write_mt5_style, write_umt5_style
from refutil import run_reference
from reference.ref_tokenizer_ops import run_op
from test_tokenizer import API_OPS, CALLS, GLUED, MULTILINGUAL, decode_cases, offline

TEXTS = MULTILINGUAL + GLUED
FAMILIES = ["mt5", "umt5"]
N_SENTINELS = {"mt5": 100, "umt5": 300}
OFFSET_CALLS = [{**c, "kwargs": {**c["kwargs"], "return_offsets_mapping": True}} for c in CALLS
                if "text_target" not in c]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The SentencePiece folders (spiece.model + json files), trained and written once."""
    root = tmp_path_factory.mktemp("tokjson")
    proto = train_model()
    return {"root": root, "mt5": write_mt5_style(root / "mt5", proto), "umt5": write_umt5_style(root / "umt5", proto)}


@pytest.fixture(scope="module")
def slow(folders):
    return {name: MT5Tokenizer.from_pretrained(folders[name]) for name in FAMILIES}


@pytest.fixture(scope="module")
def reference(folders, slow):
    """Converts the folders with transformers and records T5TokenizerFast's outputs on the `*_json` ones."""
    root = folders["root"]
    work = root / "reference"
    work.mkdir()
    convert, cases = [], []
    for name in FAMILIES:
        convert.append([str(folders[name]), str(root / f"{name}_both"), str(root / f"{name}_json")])
        marker = "▁<extra_id_{}>" if name == "mt5" else "<extra_id_{}>"
        cases.append({"name": name, "dir": str(root / f"{name}_json"), "tokenize": TEXTS,
                      "decode": decode_cases(slow[name]), "calls": CALLS + OFFSET_CALLS,
                      "sentinels": [marker.format(n) for n in range(N_SENTINELS[name])], "ops": API_OPS})
    request = {"convert": convert, "cases": cases}
    (work / "request.json").write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    run_reference("ref_tokenizer_fast.py", work / "request.json", work / "result.json")
    result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    return {case["name"]: {**result[case["name"]], "request": case,
                           "both": root / f"{case['name']}_both", "json": root / f"{case['name']}_json"}
            for case in cases}


@pytest.fixture(scope="module")
def fast(reference):
    return {name: MT5Tokenizer.from_pretrained(reference[name]["json"]) for name in FAMILIES}


def as_lists(encoding: dict) -> dict:
    """Our offsets are tuples, the reference's JSON lists."""
    out = dict(encoding)
    if "offset_mapping" in out:
        rows = out["offset_mapping"]
        nested = bool(rows) and isinstance(rows[0], list)
        out["offset_mapping"] = [[list(o) for o in r] for r in rows] if nested else [list(o) for o in rows]
    return out


# ---------------------------------------------------------------------- parity with transformers' fast tokenizer


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_json_only_repo_gives_the_fast_tokenizer(name, fast, reference):
    tok = fast[name]
    assert type(tok) is MT5TokenizerFast and not (reference[name]["json"] / "spiece.model").exists()
    assert len(tok) == reference[name]["len"] and tok.vocab_size == reference[name]["vocab_size"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)


@pytest.mark.parametrize("name", FAMILIES)
def test_ids_tokens_masks_and_offsets_match(name, fast, reference):
    tok, ref = fast[name], reference[name]
    for i, text in enumerate(TEXTS):
        got = tok(text, return_offsets_mapping=True)
        assert tok.tokenize(text) == ref["tokens"][i], text
        assert got["input_ids"] == ref["ids"][i], text
        assert got["attention_mask"] == ref["masks"][i], text
        assert [list(o) for o in got["offset_mapping"]] == ref["offsets"][i], text


@pytest.mark.parametrize("name", FAMILIES)
def test_decoding_matches(name, fast, reference):
    tok, ref = fast[name], reference[name]
    for ids, plain, skip, raw in zip(ref["request"]["decode"], ref["decode"], ref["decode_skip"], ref["decode_raw"]):
        assert tok.decode(ids) == plain, ids
        assert tok.decode(ids, skip_special_tokens=True) == skip, ids
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == raw, ids
    assert tok.batch_decode(ref["request"]["decode"][:5]) == ref["decode"][:5]


@pytest.mark.parametrize("name", FAMILIES)
def test_batches_match(name, fast, reference):
    """Padding, truncation (the `tokenizers` rules), pairs, targets, offsets; refusals raise as in transformers."""
    tok = fast[name]
    for call, want in zip(CALLS + OFFSET_CALLS, reference[name]["calls"]):
        args = dict(text_pair=call.get("text_pair"), text_target=call.get("text_target"), **call["kwargs"])
        if "error" in want:
            with pytest.raises(ValueError, match="cannot remove"):
                tok(call.get("text"), **args)
            continue
        assert as_lists(tok(call.get("text"), **args)) == want, call


@pytest.mark.parametrize("name", FAMILIES)
def test_api_calls_match(name, fast, reference):
    """get_vocab, sentinel lists, convert_tokens_to_string, encode/encode_plus, tensors, pad(), as T5TokenizerFast."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for op, want in zip(API_OPS, reference[name]["ops"]):
            got = run_op(fast[name], op)
            if op["method"] == "get_vocab":  # the `tokenizers` vocabulary is a hash map: its order is arbitrary
                got, want = got["items"], want["items"]
            assert got == want, op


@pytest.mark.parametrize("name", FAMILIES)
def test_sentinels_of_both_families(name, fast, slow, reference):
    """mT5: `▁<extra_id_N>` pieces; UMT5: added `<extra_id_N>` tokens. Same ids as transformers and as our
    SentencePiece tokenizer."""
    tok, want = fast[name], reference[name]["sentinels"]
    assert [tok.sentinel_id(n) for n in range(N_SENTINELS[name])] == want
    assert tok.sentinel_ids == slow[name].sentinel_ids and tok.is_sentinel(want[7])
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_42>"]) == [want[0], want[42]]
    ids = tok("Hello <extra_id_0> world <extra_id_1>.")["input_ids"]
    assert [i for i in ids if tok.is_sentinel(i)] == [want[0], want[1]]
    with pytest.raises(ValueError, match=f"no <extra_id_{N_SENTINELS[name]}>"):
        tok.sentinel_id(N_SENTINELS[name])


def test_glued_mt5_marker_is_spelled_out_as_by_transformers(fast, slow, reference):
    """The documented choice: tokenizer.json's own encoding (our SentencePiece class maps it to the sentinel)."""
    tok = fast["mt5"]
    ids = tok("foo<extra_id_0>bar")["input_ids"]
    assert ids == reference["mt5"]["ids"][TEXTS.index("foo<extra_id_0>bar")]
    assert tok.sentinel_id(0) not in ids
    assert slow["mt5"].sentinel_id(0) in slow["mt5"]("foo<extra_id_0>bar")["input_ids"]
    assert fast["umt5"]("foo<extra_id_0>bar")["input_ids"].count(fast["umt5"].sentinel_id(0)) == 1


# ---------------------------------------------------------------------- against our SentencePiece tokenizer


def without_byte_fallback(tok: MT5Tokenizer, ids: list) -> list:
    """SentencePiece's ids as tokenizer.json gives them: transformers' converter drops byte fallback, and the
    `tokenizers` Unigram fuses unknown characters, so each run of byte pieces becomes one `<unk>`."""
    out = []
    for i in ids:
        is_byte = 3 <= i <= 258 and tok.convert_ids_to_tokens(i).startswith("<0x")
        if not is_byte:
            out.append(i)
        elif not out or out[-1] != -1:
            out.append(-1)  # a run of byte pieces
    return [tok.unk_token_id if i == -1 else i for i in out]


@pytest.mark.parametrize("name", FAMILIES)
def test_equal_to_sentencepiece_where_both_files_exist(name, slow, reference):
    both = reference[name]["both"]
    sp, tj = MT5Tokenizer.from_pretrained(both), MT5TokenizerFast.from_pretrained(both)
    assert type(sp) is MT5Tokenizer and type(tj) is MT5TokenizerFast
    assert sp.sentinel_ids == tj.sentinel_ids and len(sp) == len(tj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in TEXTS:
            if name == "mt5" and text in GLUED:
                continue  # the documented glued-marker difference, tested above
            want = without_byte_fallback(sp, sp(text)["input_ids"])
            if text.endswith("</s>"):
                want = want + [tj.eos_token_id]  # tokenizer.json's template always appends `</s>`
            assert tj(text)["input_ids"] == want, text
    for text in MULTILINGUAL[:13]:  # fully in the vocabulary: the same ids decode to the same text
        ids = sp(text)["input_ids"]
        assert tj.decode(ids, skip_special_tokens=True) == sp.decode(ids, skip_special_tokens=True), text


# ---------------------------------------------------------------------- loading, saving, fallbacks


def test_loads_a_cached_tokenizer_json_only_hub_repo_offline(monkeypatch, reference, tmp_path):
    offline(monkeypatch)
    snapshot = tmp_path / "models--tiny--mt5-json" / "snapshots" / "0123abcd"
    shutil.copytree(reference["mt5"]["json"], snapshot)
    (tmp_path / "models--tiny--mt5-json" / "refs").mkdir()
    (tmp_path / "models--tiny--mt5-json" / "refs" / "main").write_text("0123abcd")
    tok = MT5Tokenizer.from_pretrained("tiny/mt5-json", cache_dir=tmp_path)
    assert type(tok) is MT5TokenizerFast
    text = "Hello <extra_id_0> world"
    assert tok(text)["input_ids"] == reference["mt5"]["ids"][TEXTS.index(text)]
    assert MT5TokenizerFast.from_pretrained("tiny/mt5-json", cache_dir=tmp_path).sentinel_id(0) == tok.sentinel_id(0)


@pytest.mark.parametrize("name", FAMILIES)
def test_save_pretrained_round_trip(name, fast, tmp_path):
    tok = fast[name]
    paths = tok.save_pretrained(tmp_path)
    assert {p.name for p in paths} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    again = MT5Tokenizer.from_pretrained(tmp_path)
    assert type(again) is MT5TokenizerFast and again.sentinel_ids == tok.sentinel_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [again(t)["input_ids"] for t in TEXTS] == [tok(t)["input_ids"] for t in TEXTS]
    assert again.decode(tok("a <extra_id_1> b")["input_ids"]) == tok.decode(tok("a <extra_id_1> b")["input_ids"])


def test_tensors_and_out_of_vocabulary_ids(fast):
    torch = pytest.importorskip("torch")
    tok = fast["umt5"]
    batch = tok(["a b c", "d"], text_target=["x", "y z"], padding=True, return_tensors="pt")
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == batch.attention_mask.shape
    assert batch.attention_mask[1, -1].item() == 0 and batch.labels.shape[0] == 2
    ids = tok("Hello world")["input_ids"]
    assert tok.decode([-100, *ids, len(tok) + 12]) == tok.decode(ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.convert_ids_to_tokens(len(tok) + 12)


def test_fast_class_refuses_a_sentencepiece_only_repo(folders):
    with pytest.raises(FileNotFoundError, match="only spiece.model: MT5TokenizerFast does not convert"):
        MT5TokenizerFast.from_pretrained(folders["mt5"])
    assert type(MT5Tokenizer.from_pretrained(folders["mt5"])) is MT5Tokenizer


def checkpoint_without_tokenizer(folder, **config):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mt5", **config}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_no_tokenizer_files_falls_back_to_the_base_model(folders, slow, tmp_path):
    ckpt = checkpoint_without_tokenizer(tmp_path / "finetune", _name_or_path=str(folders["umt5"]))
    with pytest.warns(UserWarning, match="using those of its base model"):
        tok = MT5Tokenizer.from_pretrained(ckpt)
    assert type(tok) is MT5Tokenizer
    assert tok("a <extra_id_3> b")["input_ids"] == slow["umt5"]("a <extra_id_3> b")["input_ids"]


def test_no_tokenizer_files_and_no_base_says_what_to_pass(monkeypatch, tmp_path):
    offline(monkeypatch)
    wanted = r"no tokenizer files \(spiece.model or tokenizer.json\).*pass the tokenizer of its base model, e.g. "
    bare = checkpoint_without_tokenizer(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match=wanted + r"MT5Tokenizer.from_pretrained\('google/mt5-small'\)"):
        MT5Tokenizer.from_pretrained(bare, cache_dir=tmp_path / "cache")
    # a base named in config.json that is neither here nor cached (offline)
    named = checkpoint_without_tokenizer(tmp_path / "named", model_type="umt5", _name_or_path="google/umt5-base")
    with pytest.raises(FileNotFoundError, match="names the base model 'google/umt5-base'") as err:
        MT5TokenizerFast.from_pretrained(named, cache_dir=tmp_path / "cache")
    assert "MT5Tokenizer.from_pretrained('google/umt5-small')" in str(err.value)
    gone = checkpoint_without_tokenizer(tmp_path / "gone", _name_or_path="/content/drive/output/checkpoint-500")
    with pytest.raises(FileNotFoundError, match=wanted):
        MT5Tokenizer.from_pretrained(gone, cache_dir=tmp_path / "cache")
