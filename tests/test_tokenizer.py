"""MT5Tokenizer against transformers 4.57's slow T5Tokenizer, on tiny SentencePiece models trained here.

Folders (see tests/reference/spm_util.py): `mt5` (sentinels `▁<extra_id_N>` inside spiece.model, like mT5),
`umt5` (300 added `<extra_id_N>` in tokenizer_config.json, like UMT5), `umt5_tokjson` (the same listed in
tokenizer.json), `t5style` (only `extra_ids: 100` in the config: transformers invents the sentinel ids),
`mt5_saved` / `umt5_saved` (written by our save_pretrained), `mt5_nonlegacy` / `umt5_nonlegacy` (`legacy: false`
in tokenizer_config.json) and `nobytes` (mT5 style, a model without byte fallback or digits: `<unk>` pieces).
The reference runs once, for every folder; it also runs the API calls of API_OPS and LOADS.
"""
import json
import random
import re
import shutil
import unicodedata
import warnings

import pytest

from model.tokenizer import MT5Tokenizer
from reference.ref_tokenizer_ops import run_load, run_op
from reference.spm_util import (SENTENCES, train_model, train_model_without_byte_fallback, write_mt5_style,
                                write_umt5_style)
from refutil import run_reference

MULTILINGUAL = SENTENCES + [
    "",
    " ",
    "  leading, trailing and   repeated   spaces  ",
    "tabs\tand\nnew\nlines\r\n and\u00a0nbsp",
    "emoji with modifiers 👍🏽 and a family 👨‍👩‍👧‍👦 ok",
    "combining e\u0301 and precomposed é, ñ vs n\u0303",
    "fullwidth ｈｅｌｌｏ，ｗｏｒｌｄ and 123",
    "unseen characters {curly} ~ ☃ 𝔘 ᚠ",
    "don't stop , ok ? yes ! it 's fine",
    "Hello <extra_id_0> world",
    "<extra_id_0> at the start, <extra_id_1> in the middle and the end <extra_id_2>",
    "two  <extra_id_5>   spaced\t<extra_id_6>\nmarkers",
    "Москва <extra_id_0> город, 東京 <extra_id_1> 都市",
    "high marker <extra_id_99> and beyond <extra_id_300> and <extra_id_1000>",
    "literal specials x </s> y <pad> z <unk> end",
    "ends with eos</s>",
    "Habari ya dunia! Kujifunza kwa mashine ni tawi la akili bandia.",  # Swahili
]
GLUED = ["foo<extra_id_0>bar", "<extra_id_0><extra_id_1>", "word<extra_id_7>", "(<extra_id_3>)",
         "中文<extra_id_0>中文"]
# Where legacy=False and the unk-as-text rule matter (no offset or round-trip checks: a literal `▁` is a space).
LEGACY_CASES = ["digits 92000 and ▁ a literal mark, ▁▁ twice", "▁starts with the mark",
                "after specials </s>x </s> y<pad>z, <extra_id_0>.  <extra_id_1>,x", "</s> first", "<extra_id_0>x"]
TEXTS = MULTILINGUAL + GLUED + LEGACY_CASES

CALLS = [
    {"text": MULTILINGUAL[:6], "kwargs": {"padding": True}},
    {"text": MULTILINGUAL[:5], "text_pair": MULTILINGUAL[5:10],
     "kwargs": {"padding": "max_length", "truncation": True, "max_length": 24}},
    {"text": MULTILINGUAL[:5], "text_pair": MULTILINGUAL[8:13],
     "kwargs": {"truncation": "only_second", "max_length": 30}},
    {"text": MULTILINGUAL[:5], "text_pair": MULTILINGUAL[13:18],
     "kwargs": {"truncation": "longest_first", "max_length": 11}},
    {"text": MULTILINGUAL[:4], "text_target": MULTILINGUAL[20:24],
     "kwargs": {"padding": True, "truncation": True, "max_length": 12}},
    {"text_target": MULTILINGUAL[18:22], "kwargs": {"padding": "longest"}},
    {"text": MULTILINGUAL[0], "kwargs": {"max_length": 5}},
    {"text": MULTILINGUAL[1], "text_pair": MULTILINGUAL[2], "kwargs": {"padding": "max_length", "max_length": 90}},
    {"text": MULTILINGUAL[0], "text_target": MULTILINGUAL[4], "kwargs": {}},
    {"text": MULTILINGUAL[:3], "kwargs": {"padding": "longest", "padding_side": "left"}},
    {"text": MULTILINGUAL[10:14], "kwargs": {"padding": True, "add_special_tokens": False}},
    {"text": ["ends with eos</s>", "x </s>", ""], "kwargs": {"padding": True}},
    {"text": MULTILINGUAL[2], "kwargs": {"truncation": True, "max_length": 1}},
    {"text": MULTILINGUAL[20:26], "text_pair": MULTILINGUAL[14:20],
     "kwargs": {"truncation": "only_first", "max_length": 16}},
    {"text": MULTILINGUAL[:5], "kwargs": {"padding": True, "pad_to_multiple_of": 8}},
    {"text": MULTILINGUAL[3:7], "text_pair": MULTILINGUAL[:4],
     "kwargs": {"padding": "max_length", "truncation": True, "max_length": 24, "pad_to_multiple_of": 6}},
]

# API calls run on ours and on transformers' T5Tokenizer (tests/reference/ref_tokenizer_ops.py).
API_TEXTS = ["Hello <extra_id_0> world", "a b c d e f g", "x", "Москва 92000 ☃", "literal x </s> y"]
ROWS = {"input_ids": [[5, 6, 7], [8]]}
API_OPS = [
    {"method": "vocab_size"}, {"method": "__len__"}, {"method": "get_vocab"},
    {"method": "get_sentinel_tokens", "sort": True}, {"method": "get_sentinel_token_ids", "sort": True},
    *[{"method": "tokens_to_string", "args": [t]} for t in API_TEXTS + MULTILINGUAL[:12] + MULTILINGUAL[-4:]],
    {"method": "convert_tokens_to_string", "args": [["▁a", "</s>", "▁b", "<pad>", "c", "▁<extra_id_0>"]]},
    {"method": "encode", "args": [API_TEXTS[1]]},
    {"method": "encode", "args": [API_TEXTS[1], API_TEXTS[0]]},
    {"method": "encode", "args": [API_TEXTS[1]], "kwargs": {"max_length": 4, "truncation": True}},
    {"method": "encode", "args": [API_TEXTS[2]], "kwargs": {"padding": "max_length", "max_length": 6}},
    {"method": "encode", "args": [API_TEXTS[1]], "kwargs": {"max_length": 5}},
    {"method": "encode", "args": [API_TEXTS[0]], "kwargs": {"return_tensors": "pt"}},
    {"method": "encode", "args": [API_TEXTS[0]], "kwargs": {"return_tensors": "np"}},
    {"method": "encode", "args": [API_TEXTS[0]], "kwargs": {"add_special_tokens": False}},
    {"method": "encode_plus", "args": [API_TEXTS[0]]},
    {"method": "encode_plus", "args": [API_TEXTS[1], API_TEXTS[2]],
     "kwargs": {"padding": "max_length", "max_length": 16, "return_tensors": "np"}},
    {"method": "encode_plus", "args": [API_TEXTS[1]], "kwargs": {"truncation": True, "max_length": 3,
                                                                "return_tensors": "pt"}},
    {"method": "__call__", "args": [API_TEXTS], "kwargs": {"padding": True, "return_tensors": "np"}},
    {"method": "__call__", "args": [API_TEXTS], "kwargs": {"padding": True, "pad_to_multiple_of": 8}},
    {"method": "__call__", "args": [API_TEXTS[2]], "kwargs": {"padding": True, "pad_to_multiple_of": 8,
                                                             "return_tensors": "pt"}},
    {"method": "__call__", "args": [API_TEXTS], "kwargs": {"padding": "max_length", "max_length": 10,
                                                          "pad_to_multiple_of": 4}},
    {"method": "__call__", "args": [API_TEXTS], "kwargs": {"padding": True, "truncation": True, "max_length": 10,
                                                          "pad_to_multiple_of": 4}},
    {"method": "__call__", "args": [API_TEXTS], "kwargs": {"padding": True, "truncation": True, "max_length": 8,
                                                          "pad_to_multiple_of": 4, "padding_side": "left",
                                                          "return_tensors": "np"}},
    {"method": "__call__", "args": [API_TEXTS[:2]], "kwargs": {"text_target": API_TEXTS[2:4], "padding": True,
                                                              "return_tensors": "np"}},
    {"method": "__call__", "args": [API_TEXTS], "kwargs": {"return_tensors": "np"}},
    {"method": "__call__", "args": [API_TEXTS[0]], "kwargs": {"return_tensors": "np"}},
    {"method": "pad", "args": [ROWS]},
    {"method": "pad", "args": [{**ROWS, "attention_mask": [[1, 1, 1], [1]]}],
     "kwargs": {"padding": "max_length", "max_length": 5, "pad_to_multiple_of": 4}},
    {"method": "pad", "args": [[{"input_ids": [5, 6, 7]}, {"input_ids": [8]}]], "kwargs": {"return_tensors": "pt"}},
    {"method": "pad", "args": [[{"input_ids": [5, 6], "labels": [1, 2, 3]}, {"input_ids": [8], "labels": [4]}]]},
    {"method": "pad", "args": [{"input_ids": [5, 6, 7]}], "kwargs": {"pad_to_multiple_of": 4, "return_tensors": "np"}},
    {"method": "pad", "args": [{"input_ids": [5, 6, 7]}], "kwargs": {"return_tensors": "pt"}},
    {"method": "pad", "args": [ROWS], "kwargs": {"padding_side": "left", "return_tensors": "np"}},
    {"method": "pad", "args": [[{"input_ids": {"tensor": "pt", "values": [5, 6, 7]}},
                                {"input_ids": {"tensor": "pt", "values": [8]}}]]},
    {"method": "pad", "args": [{"input_ids": [{"tensor": "np", "values": [5, 6]}, {"tensor": "np", "values": [7]}]}]},
    {"method": "pad", "args": [{"attention_mask": [[1]]}]},
    {"method": "pad", "args": [ROWS], "kwargs": {"padding": False}},
    {"method": "pad", "args": [ROWS], "kwargs": {"return_attention_mask": False}},
    {"method": "pad", "args": [{**ROWS, "special_tokens_mask": [[0, 0, 1], [1]], "token_type_ids": [[0, 0, 0], [0]]}],
     "kwargs": {"max_length": 4, "padding": "max_length"}},
    {"method": "pad", "args": [{"input_ids": []}]},
    {"method": "pad", "args": [ROWS], "kwargs": {"padding": "max_length"}},
]
LOAD_TEXTS = ["a <sep> b<sep>c <extra_id_0> d", "x <extra_id_1>. y"]
LOADS = {
    # (mT5 with "<extra_id_0>" listed: same ids, but transformers' token string drops the piece's `▁`)
    "mt5": [{"additional_special_tokens": ["<sep>"]}, {"extra_ids": 0, "additional_special_tokens": ["<sep>"]}],
    "umt5": [{"additional_special_tokens": ["<sep>"]}, {"additional_special_tokens": ["<sep>", "<extra_id_0>"]},
             {"extra_ids": 0, "additional_special_tokens": ["<sep>"]}],
    "t5style": [{"extra_ids": 0, "additional_special_tokens": ["<sep>"]},
                {"additional_special_tokens": ["<sep>", "<extra_id_0>"]}],
}
COMMON_LOADS = [{"model_max_length": 8}, {"legacy": False}, {"legacy": True},
                {"eos_token": "</s>", "unk_token": "<unk>"}]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """The tokenizer folders, trained and written once."""
    root = tmp_path_factory.mktemp("tokenizers")
    proto = train_model()
    out = {
        "mt5": write_mt5_style(root / "mt5", proto),
        "umt5": write_umt5_style(root / "umt5", proto),
        "umt5_tokjson": write_umt5_style(root / "umt5_tokjson", proto, as_tokenizer_json=True),
        "t5style": root / "t5style",
    }
    out["t5style"].mkdir()
    (out["t5style"] / "spiece.model").write_bytes(proto.SerializeToString())
    (out["t5style"] / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 100}))
    for name in ("mt5", "umt5"):
        folder = out[f"{name}_nonlegacy"] = (write_mt5_style if name == "mt5" else write_umt5_style)(
            root / f"{name}_nonlegacy", proto)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": False}))
    out["nobytes"] = write_mt5_style(root / "nobytes", train_model_without_byte_fallback())
    for name in ("mt5", "umt5"):
        MT5Tokenizer.from_pretrained(out[name]).save_pretrained(root / f"{name}_saved")
        out[f"{name}_saved"] = root / f"{name}_saved"
    return out


@pytest.fixture(scope="session")
def toks(folders):
    return {name: MT5Tokenizer.from_pretrained(path) for name, path in folders.items()}


def decode_cases(tok: MT5Tokenizer) -> list:
    """Id lists to decode: every encoded text, hand-picked edge cases, and random ids over the vocabulary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = [tok(t)["input_ids"] for t in TEXTS]
    emoji_bytes = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "👨".encode()]
    sentinel = sorted(tok.sentinel_ids)[-1]
    edge = [[], [0], [1], [2], [0, 1, 0], encoded[0][:3] + [0, 0], emoji_bytes, emoji_bytes[:2] + encoded[1],
            [sentinel] + encoded[0], encoded[0][:2] + [sentinel, sentinel] + [1, 0], [3, 4, 258, 259, 260]]
    rng = random.Random(0)
    randoms = [[rng.randrange(len(tok)) for _ in range(rng.randint(1, 30))] for _ in range(60)]
    return encoded + edge + randoms


@pytest.fixture(scope="session")
def reference(folders, toks, tmp_path_factory):
    """transformers' outputs for every folder, from one run of the reference interpreter."""
    work = tmp_path_factory.mktemp("reference")
    cases = []
    for name, path in folders.items():
        self_added = 300 if name in ("umt5", "umt5_tokjson") else None
        loads = [{"kwargs": kw, "texts": LOAD_TEXTS} for kw in LOADS.get(name, []) + COMMON_LOADS]
        cases.append({"name": name, "dir": str(path), "self_added_sentinels": self_added, "tokenize": TEXTS,
                      "decode": decode_cases(toks[name]), "calls": CALLS, "ops": API_OPS, "loads": loads})
    (work / "request.json").write_text(json.dumps({"cases": cases}, ensure_ascii=False), encoding="utf-8")
    run_reference("ref_tokenizer.py", work / "request.json", work / "result.json")
    result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    return {case["name"]: {**result[case["name"]], "request": case} for case in cases}


ALL = ["mt5", "umt5", "umt5_tokjson", "t5style", "mt5_saved", "umt5_saved", "mt5_nonlegacy", "umt5_nonlegacy",
       "nobytes"]


# ---------------------------------------------------------------------- vocabulary


def test_special_ids_sizes_and_sentinels(toks):
    mt5, umt5, t5 = toks["mt5"], toks["umt5"], toks["t5style"]
    base = mt5._sp_size - 100  # pieces trained; mT5 style adds 100 sentinel pieces after them
    for name, tok in toks.items():
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        if name == "nobytes":
            continue  # no byte pieces
        assert tok.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<pad>", "</s>", "<unk>", "<0x00>", "<0xFF>"]
    assert mt5.vocab_size == len(mt5) == base + 100
    assert [mt5.sentinel_id(n) for n in (0, 1, 99)] == [base + 99, base + 98, base]
    assert mt5.convert_ids_to_tokens(base + 99) == "▁<extra_id_0>"
    # transformers: vocab_size is the SentencePiece piece count, len() adds the added tokens
    assert umt5.vocab_size == base and len(umt5) == base + 300 and toks["t5style"].vocab_size == base
    assert [umt5.sentinel_id(n) for n in (0, 299)] == [base + 299, base]
    assert umt5.sentinel_ids == frozenset(range(base, base + 300)) and umt5.is_sentinel(base + 7)
    assert not umt5.is_sentinel(5) and len(t5.sentinel_ids) == 100 and t5.sentinel_id(0) == base + 99
    assert umt5.model_max_length == 1000000000000000019884624838656
    with pytest.raises(ValueError, match="no <extra_id_100>"):
        mt5.sentinel_id(100)


def test_sentinel_names_resolve_to_ids(toks):
    """`<extra_id_N>` finds mT5's `▁<extra_id_N>` piece too (transformers would answer unk)."""
    for tok in toks.values():
        assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_42>"]) == [tok.sentinel_id(0), tok.sentinel_id(42)]


def test_sentinel_ids_read_from_files_with_another_base(folders, tmp_path):
    """An early UMT5 conversion put the sentinels at 256383 - N: ids come from the files, not a formula."""
    proto_path = folders["umt5"] / "spiece.model"
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto.FromString(proto_path.read_bytes())
    base = len(proto.pieces) + 84
    tok = MT5Tokenizer.from_pretrained(write_umt5_style(tmp_path / "odd", proto, base=base))
    assert tok.sentinel_id(0) == base + 299 and tok.vocab_size == len(proto.pieces)
    assert len(tok) == len(proto.pieces) + 300  # distinct tokens, as transformers counts them (ids leave a hole)
    ids = tok("a <extra_id_0> b")["input_ids"]
    assert base + 299 in ids
    assert tok.decode(ids) == "a <extra_id_0> b</s>"


# ---------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("name", ALL)
def test_encoding_matches_transformers(name, toks, reference):
    tok, ref = toks[name], reference[name]
    for text, want_tokens, want_ids in zip(TEXTS, ref["tokenize"], ref["ids"]):
        if text in GLUED and tok._model_sentinels:
            continue  # the deliberate difference, tested below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert (tok.tokenize(text), tok(text)["input_ids"]) == (want_tokens, want_ids), text


@pytest.mark.parametrize("name", ALL)
def test_decoding_matches_transformers(name, toks, reference):
    tok, ref = toks[name], reference[name]
    assert len(tok) == ref["len"]
    for ids, plain, skip, raw in zip(ref["request"]["decode"], ref["decode"], ref["decode_skip"], ref["decode_raw"]):
        assert tok.decode(ids) == plain, ids
        assert tok.decode(ids, skip_special_tokens=True) == skip, ids
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == raw, ids
    assert tok.batch_decode(ref["request"]["decode"][:5]) == ref["decode"][:5]


@pytest.mark.parametrize("name", ["mt5", "umt5", "t5style", "mt5_nonlegacy", "umt5_nonlegacy", "nobytes"])
def test_batches_match_transformers(name, toks, reference):
    tok = toks[name]
    for call, want in zip(CALLS, reference[name]["calls"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = tok(call.get("text"), text_pair=call.get("text_pair"), text_target=call.get("text_target"),
                      **call["kwargs"])
        assert dict(got) == want, call


def test_glued_marker_maps_to_sentinel_unlike_transformers(toks, reference):
    """mT5's sentinel pieces carry a leading `▁`: transformers spells a glued marker out, we keep the sentinel."""
    mt5, ref = toks["mt5"], reference["mt5"]
    ours = mt5("foo<extra_id_0>bar")["input_ids"]
    theirs = ref["ids"][TEXTS.index("foo<extra_id_0>bar")]
    assert ours == mt5("foo")["input_ids"][:-1] + [mt5.sentinel_id(0)] + mt5.convert_tokens_to_ids(["ba", "r"]) + [1]
    assert theirs != ours and mt5.sentinel_id(0) not in theirs
    for text in GLUED:
        n_markers = text.count("<extra_id_")
        assert sum(mt5.is_sentinel(i) for i in mt5(text)["input_ids"]) == n_markers, text
        # UMT5's sentinels are added tokens, which transformers finds anywhere too.
        assert toks["umt5"](text)["input_ids"] == reference["umt5"]["ids"][TEXTS.index(text)]


@pytest.mark.parametrize("name", ["mt5", "umt5"])
def test_every_marker_becomes_its_sentinel(name, toks):
    tok = toks[name]
    for text in ["a<extra_id_3>b", "<extra_id_3>", "x\t<extra_id_3>\ny", "<extra_id_3><extra_id_4><extra_id_5>",
                 "nbsp\u00a0<extra_id_3> and ideographic\u3000<extra_id_4>",
                 "«<extra_id_3>»", "<extra_id_3>.", "1<extra_id_3>2<extra_id_4>"]:
        want = [tok.sentinel_id(int(n)) for n in re.findall(r"<extra_id_(\d+)>", text)]
        assert [i for i in tok(text)["input_ids"] if tok.is_sentinel(i)] == want, text


# ---------------------------------------------------------------------- offsets and round trips


def check_offsets(tok: MT5Tokenizer, text: str) -> None:
    """Each token's span shows the characters it came from (up to NFKC); `</s>` and padding have (0, 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ends with eos</s>" already has its `</s>`
        enc = tok(text, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    assert len(spans) == len(enc["input_ids"])
    if not text.endswith("</s>"):  # else that `</s>` is the text's own, with its span, and none is added
        assert spans[-1] == (0, 0) and enc["input_ids"][-1] == tok.eos_token_id
        spans, enc["input_ids"] = spans[:-1], enc["input_ids"][:-1]
    for token_id, (start, end) in zip(enc["input_ids"], spans):
        piece, source = tok.convert_ids_to_tokens(token_id), text[start:end]
        if piece.startswith("<0x"):
            # all byte pieces of one (normalized) character share its span
            assert source and int(piece[3:5], 16) in unicodedata.normalize("NFKC", source).encode(), (text, piece)
        elif tok.is_sentinel(token_id) or token_id in tok.all_special_ids:
            assert source == piece.lstrip("▁"), (text, piece, source)
        else:
            assert unicodedata.normalize("NFKC", source.strip()) == piece.lstrip("▁"), (text, piece, source)
    starts = [s for s, e in spans if e > s]
    assert starts == sorted(starts)


@pytest.mark.parametrize("name", ["mt5", "umt5"])
def test_offsets_point_at_source_characters(name, toks):
    for text in MULTILINGUAL + GLUED:
        check_offsets(toks[name], text)


def test_offsets_of_normalized_and_padded_text(toks):
    tok = toks["mt5"]
    text = "ｈｉ ﬁ e\u0301"
    enc = tok(text, return_offsets_mapping=True)
    by_piece = {tok.convert_ids_to_tokens(i): text[s:e] for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])}
    assert by_piece["i"] in ("ｉ", "ﬁ") and by_piece["é"] == "e\u0301"
    batch = tok(["a", "much longer text"], text_pair=["b", "c"], padding=True, return_offsets_mapping=True)
    short = batch["offset_mapping"][0]
    assert short[-1] == (0, 0) and len(short) == len(batch["offset_mapping"][1])
    # each text of a pair has its own offsets; padding gets (0, 0)
    own = [tok(t, return_offsets_mapping=True)["offset_mapping"] for t in ("a", "b")]
    assert short == own[0] + own[1] + [(0, 0)] * (len(short) - len(own[0]) - len(own[1]))


@pytest.mark.parametrize("name", ["mt5", "umt5"])
def test_decode_round_trips_up_to_normalization(name, toks):
    tok = toks[name]
    for text in MULTILINGUAL:
        if "<" in text:
            continue  # markers and literal special tokens do not round-trip with skip_special_tokens
        decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert decoded == " ".join(unicodedata.normalize("NFKC", text).split()), text


# ---------------------------------------------------------------------- API details


def test_tensors_labels_and_batch_encoding(toks):
    torch = pytest.importorskip("torch")
    tok = toks["umt5"]
    one = tok("Hello <extra_id_0> world", return_tensors="pt")
    assert one.input_ids.shape == (1, len(tok("Hello <extra_id_0> world")["input_ids"]))
    assert one.input_ids.dtype == torch.long and tok.sentinel_id(0) in one.input_ids[0].tolist()
    batch = tok(["a b c", "d"], text_target=["x", "y z w"], padding=True, return_tensors="pt",
                return_offsets_mapping=True).to("cpu")
    assert set(batch) == {"input_ids", "attention_mask", "offset_mapping", "labels"}
    assert batch.offset_mapping.shape == (*batch.input_ids.shape, 2)
    assert batch.labels.shape[1] == len(tok("y z w")["input_ids"]) and batch.labels[0, -1].item() == tok.pad_token_id
    assert batch.attention_mask.tolist()[1][-1] == 0
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a b c", "d"], return_tensors="pt")
    assert tok.decode(one.input_ids[0]) == tok.decode(one.input_ids[0].tolist())
    assert tok.batch_decode(batch.input_ids, skip_special_tokens=True) == ["a b c", "d"]


def test_decode_drops_ids_outside_the_vocabulary(toks):
    tok = toks["mt5"]
    ids = tok("Hello world")["input_ids"]
    assert tok.decode([-100, *ids, len(tok) + 12]) == tok.decode(ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.convert_ids_to_tokens(len(tok) + 12)


def test_save_pretrained_round_trip(toks, tmp_path):
    for name in ("mt5", "umt5"):
        again = MT5Tokenizer.from_pretrained(toks[name].save_pretrained(tmp_path / name)[0].parent)
        assert again._added == toks[name]._added and again.sentinel_ids == toks[name].sentinel_ids
        assert again("a <extra_id_1> b")["input_ids"] == toks[name]("a <extra_id_1> b")["input_ids"]
    config = json.loads((tmp_path / "mt5" / "tokenizer_config.json").read_text())
    assert config["extra_ids"] == 0 and "additional_special_tokens" not in config


# ---------------------------------------------------------------------- errors and the Hub cache


def test_missing_spiece_model_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no spiece.model in"):
        MT5Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_text("not a model")
    with pytest.raises(ValueError, match="is not a SentencePiece model"):
        MT5Tokenizer.from_pretrained(tmp_path)


def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)


def test_unknown_repo_offline_is_a_clear_error(monkeypatch, tmp_path):
    offline(monkeypatch)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        MT5Tokenizer.from_pretrained("no-such-org/no-such-mt5", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory here, nor a Hub repo id"):
        MT5Tokenizer.from_pretrained(str(tmp_path / "missing" / "folder"), cache_dir=tmp_path)


def test_loads_a_cached_hub_repo_offline(monkeypatch, folders, tmp_path):
    offline(monkeypatch)
    snapshot = tmp_path / "models--tiny--umt5" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for path in folders["umt5"].iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (tmp_path / "models--tiny--umt5" / "refs").mkdir()
    (tmp_path / "models--tiny--umt5" / "refs" / "main").write_text("0123abcd")
    tok = MT5Tokenizer.from_pretrained("tiny/umt5", cache_dir=tmp_path)
    assert tok.sentinel_id(0) == MT5Tokenizer.from_pretrained(folders["umt5"]).sentinel_id(0)


# ---------------------------------------------------------------------- the rest of transformers' API


@pytest.mark.parametrize("name", ALL)
def test_api_calls_match_transformers(name, toks, reference):
    """get_vocab, sentinel lists, convert_tokens_to_string, encode/encode_plus kwargs, np/pt tensors (dtype and
    shape), pad_to_multiple_of, pad() on every input form; the same errors."""
    tok = toks[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for op, want in zip(API_OPS, reference[name]["ops"]):
            assert run_op(tok, op) == want, op


@pytest.mark.parametrize("name", ["mt5", "umt5", "t5style"])
def test_from_pretrained_keywords_match_transformers(name, folders, reference):
    """additional_special_tokens / extra_ids / model_max_length / legacy / special tokens given to from_pretrained."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for load, want in zip(reference[name]["request"]["loads"], reference[name]["loads"]):
            assert run_load(MT5Tokenizer, folders[name], load) == want, load


def test_unknown_text_tokenizes_as_itself(toks):
    tok = toks["nobytes"]
    assert tok.tokenize("92000") == ["▁", "92000"]
    assert tok("92000")["input_ids"] == [tok.convert_tokens_to_ids("▁"), tok.unk_token_id, tok.eos_token_id]


def test_legacy_false_drops_the_space_after_special_tokens(toks):
    legacy, new = toks["umt5"], toks["umt5_nonlegacy"]
    assert not new.legacy and legacy.legacy
    assert legacy.tokenize("Hello <extra_id_0>.")[-2:] == ["▁", "."]
    assert new.tokenize("Hello <extra_id_0>.")[-2:] == ["<extra_id_0>", "."]
    check_offsets(new, "Hello <extra_id_0>. and </s>x")
    assert MT5Tokenizer.from_pretrained(toks["umt5"].vocab_file.parent, legacy=False).tokenize("a</s>b") == \
        new.tokenize("a</s>b")


@pytest.mark.parametrize("name", ["mt5", "umt5_nonlegacy", "nobytes"])
def test_save_pretrained_after_the_source_folder_is_gone(name, folders, toks, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(folders[name], source)
    tok = MT5Tokenizer.from_pretrained(source)
    shutil.rmtree(source)
    tok.save_pretrained(tmp_path / "saved")
    again = MT5Tokenizer.from_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "spiece.model").read_bytes() == (folders[name] / "spiece.model").read_bytes()
    assert again.legacy == toks[name].legacy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [again(t)["input_ids"] for t in TEXTS] == [toks[name](t)["input_ids"] for t in TEXTS]


def test_pad_takes_our_own_batch_encoding(toks):
    torch = pytest.importorskip("torch")
    tok = toks["umt5"]
    rows = [tok(t) for t in API_TEXTS]
    padded = tok.pad(rows, return_tensors="pt")
    assert torch.equal(padded["input_ids"], tok(API_TEXTS, padding=True, return_tensors="pt")["input_ids"])
    assert tok.pad(tok(API_TEXTS), pad_to_multiple_of=8)["input_ids"] == \
        tok(API_TEXTS, padding=True, pad_to_multiple_of=8)["input_ids"]
