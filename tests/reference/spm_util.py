"""Builds tiny mT5-style and UMT5-style tokenizer folders for tests (main interpreter only).

The SentencePiece building lives in `model/tiny.py` (the app's demo mode uses it too); this module keeps the
tests' fixed training corpus.

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
import random

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from model.tiny import train_sentencepiece, write_mt5_style, write_umt5_style  # noqa: F401 (re-exported)

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
    """Trains the small unigram model on `corpus()` with mT5's special-id layout; returns its proto."""
    return train_sentencepiece(corpus(), vocab_size)


def train_model_without_byte_fallback(vocab_size: int = 1000) -> model_pb2.ModelProto:
    """A unigram model like `train_model`'s but without byte fallback and without digits in its corpus: digits
    and unseen characters become `<unk>` pieces (which transformers' `tokenize` shows as their text)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in corpus() if not any(c.isdigit() for c in line)]),
        model_writer=buf, model_type="unigram", vocab_size=vocab_size, byte_fallback=False,
        normalization_rule_name="nmt_nfkc", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1, minloglevel=2,
    )
    return model_pb2.ModelProto.FromString(buf.getvalue())
