"""Tiny mT5/UMT5 checkpoints built locally: a SentencePiece model trained on given texts, and random weights.

Used by the app's offline demo mode and by the tests, so both build their checkpoints one way. Nothing here
downloads anything; a full set of demo checkpoints takes about a second on a 2-core CPU.

The tokenizers follow mT5's conventions: `<pad>` = 0, `</s>` = 1, `<unk>` = 2, byte fallback (`<0x00>`..`<0xFF>`
= ids 3-258, so any text encodes), no BOS, `nmt_nfkc` normalization.

- mT5 style: the sentinels are pieces of the SentencePiece model itself, appended at the end as USER_DEFINED
  pieces named `▁<extra_id_N>` (the real mt5 `spiece.model` names them with the leading `▁`, as seqio's
  vocabulary code does), so `▁<extra_id_0>` is the last piece: id = size - 1 - N. The tokenizer_config says
  `extra_ids: 0`, like google/mt5-small's.
- UMT5 style: no sentinels in the model; `<extra_id_N>` added tokens with id = base + n - 1 - N, listed in
  tokenizer_config.json's `added_tokens_decoder` (and `additional_special_tokens`, `extra_ids`).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from .config import MT5Config, T5Config, UMT5Config
from .registry import model_class

# The demo's heads. Label names are real ones so the pages look like a fine-tuned model's (the weights are not).
DEMO_CLASS_LABELS = ["negative", "neutral", "positive"]
DEMO_TAG_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
DEMO_SHAPE = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                  relative_attention_max_distance=32, dropout_rate=0.0)
DEMO_GENERATION = {"max_new_tokens": 24, "num_beams": 1, "no_repeat_ngram_size": 3, "length_penalty": 1.0}
MANIFEST = "demo_manifest.json"
MARKER = re.compile(r"<extra_id_\d+>")
TINY_VERSION = 5  # bump when the checkpoints' layout changes, so cached demo folders are rebuilt


# ------------------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------------------
def train_sentencepiece(texts: Iterable[str], vocab_size: int = 1500, hard_vocab_limit: bool = True, *,
                        byte_fallback: bool = True, pad_id: int = 0, eos_id: int = 1, unk_id: int = 2,
                        user_defined_symbols: Iterable[str] = ()) -> model_pb2.ModelProto:
    """Trains a unigram model on `texts`; returns its proto. Defaults are mT5's special-id layout.

    Without `hard_vocab_limit`, `vocab_size` is an upper bound: a small corpus gets what it can support.
    MADLAD-400's layout is unk 0, pad 1, eos 2 with its `<2xx>` language tokens as `user_defined_symbols`; T5's
    and Flan-T5's has no byte fallback.
    """
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=buf, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=hard_vocab_limit, byte_fallback=byte_fallback, normalization_rule_name="nmt_nfkc",
        character_coverage=1.0, user_defined_symbols=list(user_defined_symbols),
        pad_id=pad_id, eos_id=eos_id, unk_id=unk_id, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", num_threads=1, minloglevel=2,
    )
    return model_pb2.ModelProto.FromString(buf.getvalue())


def train_madlad_style(texts: Iterable[str], languages: Iterable[str], vocab_size: int = 1500,
                       hard_vocab_limit: bool = False) -> model_pb2.ModelProto:
    """A MADLAD-400-style model: unk 0, pad 1, eos 2, byte fallback, a `<2xx>` piece per language code."""
    return train_sentencepiece(texts, vocab_size, hard_vocab_limit, pad_id=1, eos_id=2, unk_id=0,
                               user_defined_symbols=[f"<2{code}>" for code in languages])


def write_madlad_style(folder: Path, proto: model_pb2.ModelProto) -> Path:
    """Writes spiece.model and Hub-like json files for a MADLAD-400-style model (no sentinels: extra_ids 0)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(proto.SerializeToString())
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(folder / "tokenizer_config.json", {**specials, "extra_ids": 0, "tokenizer_class": "T5Tokenizer"})
    _write_json(folder / "special_tokens_map.json", specials)
    return folder


def write_mt5_style(folder: Path, proto: model_pb2.ModelProto, n_sentinels: int = 100) -> Path:
    """Writes spiece.model with `▁<extra_id_N>` appended as USER_DEFINED pieces, plus Hub-like json files."""
    folder = Path(folder)
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
    folder = Path(folder)
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


# ------------------------------------------------------------------------------------------------------------
# Random checkpoints
# ------------------------------------------------------------------------------------------------------------
def tiny_model(family: str, task: str, vocab_size: int, seed: int = 0, **config):
    """A randomly initialised model of `family` ('mt5'|'umt5'|'t5') for `task`, in DEMO_SHAPE unless overridden."""
    cfg_class = {"umt5": UMT5Config, "t5": T5Config}.get(family, MT5Config)
    cfg = cfg_class(vocab_size=vocab_size, **{**DEMO_SHAPE, **config})
    torch.manual_seed(seed)
    return model_class(family, task)(cfg)


def labelled(labels: list[str]) -> dict:
    """Config fields naming `labels` (num_labels, id2label, label2id)."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def write_checkpoint(folder: Path, model, tokenizer_folder: Path, generation: dict | None = None) -> Path:
    """Saves `model` and copies the tokenizer files beside it (and generation_config.json when given, with the
    model's own special ids)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    for f in Path(tokenizer_folder).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if generation is not None:
        cfg = model.config
        _write_json(folder / "generation_config.json", {
            "decoder_start_token_id": cfg.decoder_start_token_id, "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id, **generation})
    return folder


def favour_sentinels(model, sentinel_ids: list[int], eos_id: int, top: float = 3.0, decay: float = 0.3) -> None:
    """Reshapes a random model's output rows so the demo's outputs look like outputs: byte-fallback pieces
    damped (no lone bytes), `<extra_id_0>`, `<extra_id_1>`, ... boosted (the span filler emits sentinels), eos
    boosted a little (it stops). `sentinel_ids` in marker order. Still random weights: meaningless outputs."""
    with torch.no_grad():
        rows = model.lm_head.weight
        rows[3:259] *= 0.3
        for n, sid in enumerate(sentinel_ids):
            rows[sid] *= 1 + top * decay ** n
        rows[eos_id] *= 1.3


def build_demo_checkpoints(folder: str | Path, texts: Iterable[str], seed: int = 0,
                           languages: Iterable[str] = ("en", "de", "fr")) -> dict[str, Path]:
    """Writes tiny random-weight checkpoints for every head under `folder`; returns {name: checkpoint dir}.

    Names: generation (mT5), span-filling and span-filling-umt5 (their random outputs favour sentinels),
    classification, token-classification, question-answering, and translation (a MADLAD-400-shaped T5: pad 1,
    eos 2, a `<2xx>` token per code of `languages`). The tokenizers are trained on `texts`. A folder already
    built from the same texts and languages (its manifest matches) is reused as it is.
    """
    folder = Path(folder)
    texts = [MARKER.sub(" ", t) for t in texts if t.strip()]  # sentinels are added as pieces of their own
    languages = list(languages)
    key = hashlib.sha256(json.dumps([TINY_VERSION, seed, texts, languages], ensure_ascii=False).encode()).hexdigest()
    manifest = folder / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        paths = {name: folder / name for name in saved.get("checkpoints", [])}
        if saved.get("key") == key and all((p / "config.json").is_file() for p in paths.values()):
            return paths
    proto = train_sentencepiece(texts, vocab_size=2000, hard_vocab_limit=False)
    mt5_tok = write_mt5_style(folder / "_tokenizer-mt5", proto)
    umt5_tok = write_umt5_style(folder / "_tokenizer-umt5", proto)
    mt5_vocab, umt5_vocab = len(proto.pieces) + 100, len(proto.pieces) + 300
    sentinels = list(reversed(range(len(proto.pieces), mt5_vocab)))   # <extra_id_0> is the last piece
    paths: dict[str, Path] = {}

    gen = tiny_model("mt5", "generation", mt5_vocab, seed)
    favour_sentinels(gen, sentinels, eos_id=1, top=0.0)   # summaries: no sentinels favoured (they are dropped)
    paths["generation"] = write_checkpoint(folder / "generation", gen, mt5_tok, DEMO_GENERATION)
    spans = tiny_model("mt5", "generation", mt5_vocab, seed)
    favour_sentinels(spans, sentinels, eos_id=1)
    paths["span-filling"] = write_checkpoint(folder / "span-filling", spans, mt5_tok, DEMO_GENERATION)
    ugen = tiny_model("umt5", "generation", umt5_vocab, seed + 1)
    favour_sentinels(ugen, list(reversed(range(len(proto.pieces), umt5_vocab))), eos_id=1)
    paths["span-filling-umt5"] = write_checkpoint(folder / "span-filling-umt5", ugen, umt5_tok,
                                                  DEMO_GENERATION)
    cls = tiny_model("mt5", "classification", mt5_vocab, seed + 2, **labelled(DEMO_CLASS_LABELS))
    paths["classification"] = write_checkpoint(folder / "classification", cls, mt5_tok)
    tag = tiny_model("mt5", "token-classification", mt5_vocab, seed + 3, **labelled(DEMO_TAG_LABELS))
    paths["token-classification"] = write_checkpoint(folder / "token-classification", tag, mt5_tok)
    qa = tiny_model("mt5", "question-answering", mt5_vocab, seed + 4)
    paths["question-answering"] = write_checkpoint(folder / "question-answering", qa, mt5_tok)
    madlad_proto = train_madlad_style(texts, languages, vocab_size=2000)
    madlad_tok = write_madlad_style(folder / "_tokenizer-madlad", madlad_proto)
    mt = tiny_model("t5", "generation", len(madlad_proto.pieces), seed + 5, pad_token_id=1, eos_token_id=2,
                    decoder_start_token_id=0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    quiet = (model_pb2.ModelProto.SentencePiece.BYTE, model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    with torch.no_grad():   # no lone bytes, no <2xx> in the output (its ids are not mT5's: computed, not 3:259)
        mt.lm_head.weight[[i for i, p in enumerate(madlad_proto.pieces) if p.type in quiet]] *= 0.3
        mt.lm_head.weight[2] *= 1.3
    paths["translation"] = write_checkpoint(folder / "translation", mt, madlad_tok, DEMO_GENERATION)

    _write_json(manifest, {"key": key, "checkpoints": sorted(paths),
                           "note": "random weights: outputs are meaningless"})
    return paths
