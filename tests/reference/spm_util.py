"""Builds tiny mT5-style and UMT5-style tokenizer folders for tests (main interpreter only).

Both use a SentencePiece unigram model trained in well under a second on an inline multilingual corpus, with
mT5's conventions: `<pad>` = 0, `</s>` = 1, `<unk>` = 2, byte fallback (`<0x00>`..`<0xFF>` = ids 3-258), no BOS,
`nmt_nfkc` normalization.

- mT5 style: the sentinels are pieces of the SentencePiece model itself, appended at the end as USER_DEFINED
  pieces named `▁<extra_id_N>` (the real mt5 `spiece.model` names them with the leading `▁`, as seqio's
  vocabulary code does), so `▁<extra_id_0>` is the last piece: id = size - 1 - N. The tokenizer_config says
  `extra_ids: 0`, like google/mt5-small's.
- UMT5 style: no sentinels in the model; 300 `<extra_id_N>` added tokens with id = base + 299 - N, listed in
  tokenizer_config.json's `added_tokens_decoder` (and `additional_special_tokens`, `extra_ids: 300`).
"""
import io
import json
import random
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you doing today? I'm fine, thanks.",
    "Machine learning is a branch of artificial intelligence.",
    "Café, naïve, résumé, façade, Größe, Straße, déjà vu.",
    "Машинное обучение — это область искусственного интеллекта.",
    "Привет, мир! Как у тебя дела сегодня?",
    "مرحبا بالعالم. التعلم الآلي هو فرع من الذكاء الاصطناعي.",
    "नमस्ते दुनिया। मशीन लर्निंग कृत्रिम बुद्धिमत्ता की एक शाखा है।",
    "你好，世界！机器学习是人工智能的一个分支。",
    "こんにちは世界。機械学習は人工知能の一分野です。",
    "สวัสดีชาวโลก การเรียนรู้ของเครื่องเป็นสาขาหนึ่งของปัญญาประดิษฐ์",
    "I love this 😀 and that 👍 a lot 🎉 really ❤️.",
    "Numbers: 123 4567 89.5 and dates 2024-01-31, 10:30.",
]

# Syllables per script: random words built from them give the trainer enough distinct substrings.
SYLLABLES = {
    "latin": "ka ri to ne ma su lo pe di an er in on st th re de la co vi mu sa ba".split(),
    "cyrillic": "ка ро ми не ст ла по де ви ра то на жи бы ще ую ия ть".split(),
    "arabic": "ال كت مد رس سا لم عل من في هو ذا كا نت بي".split(),
    "devanagari": "क का कि मा ना रा ल ले स से त ता प्र है में की".split(),
    "cjk": list("人工智能学习机器世界你好中国语言模型数据"),
    "thai": "กา รี ของ เป็น ใน การ มา ที่ นี้ ได้ และ".split(),
}


def corpus(seed: int = 0, lines: int = 1500) -> list[str]:
    """Returns the training sentences: the fixed multilingual set (repeated) plus random pseudo-words."""
    rng = random.Random(seed)
    out = SENTENCES * 20
    for _ in range(lines):
        sylls = SYLLABLES[rng.choice(sorted(SYLLABLES))]
        sep = "" if sylls is SYLLABLES["cjk"] else " "
        words = ["".join(rng.choices(sylls, k=rng.randint(1, 3))) for _ in range(rng.randint(3, 9))]
        out.append(sep.join(words))
    return out


def train_model(vocab_size: int = 1500) -> model_pb2.ModelProto:
    """Trains the small unigram model with mT5's special-id layout; returns its proto."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, model_type="unigram", vocab_size=vocab_size,
        byte_fallback=True, normalization_rule_name="nmt_nfkc", character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, minloglevel=2,
    )
    return model_pb2.ModelProto.FromString(buf.getvalue())


def write_mt5_style(folder: Path, proto: model_pb2.ModelProto, n_sentinels: int = 100) -> Path:
    """Writes spiece.model with `▁<extra_id_N>` appended as USER_DEFINED pieces, plus Hub-like json files."""
    proto = model_pb2.ModelProto.FromString(proto.SerializeToString())
    user_defined = model_pb2.ModelProto.SentencePiece.USER_DEFINED
    for n in reversed(range(n_sentinels)):
        proto.pieces.add(piece=f"▁<extra_id_{n}>", score=0.0, type=user_defined)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(proto.SerializeToString())
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {**specials, "extra_ids": 0, "additional_special_tokens": None,
              "special_tokens_map_file": None, "tokenizer_file": None, "name_or_path": "tiny-mt5"}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", specials)
    return folder


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_umt5_style(folder: Path, proto: model_pb2.ModelProto, n_sentinels: int = 300,
                     base: int | None = None, as_tokenizer_json: bool = False) -> Path:
    """Writes spiece.model without sentinels and the added `<extra_id_N>` tokens (id = base + n_sentinels-1-N).

    `as_tokenizer_json` lists them in tokenizer.json's "added_tokens" (older repos) instead of
    tokenizer_config.json's `added_tokens_decoder`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(proto.SerializeToString())
    base = len(proto.pieces) if base is None else base
    decoder = {0: _added("<pad>"), 1: _added("</s>"), 2: _added("<unk>")}
    for n in reversed(range(n_sentinels)):
        decoder[base + n_sentinels - 1 - n] = _added(f"<extra_id_{n}>")
    names = [f"<extra_id_{n}>" for n in range(n_sentinels)]
    config = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": n_sentinels,
              "additional_special_tokens": names, "model_max_length": 1000000000000000019884624838656,
              "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer", "clean_up_tokenization_spaces": True}
    if as_tokenizer_json:
        _write_json(folder / "tokenizer.json", {"added_tokens": [{"id": i, **t} for i, t in decoder.items()]})
    else:
        config["added_tokens_decoder"] = {str(i): t for i, t in decoder.items()}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", {
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": names})
    return folder


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
