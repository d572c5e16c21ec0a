"""A tiny random MetricX-shaped checkpoint (mT5's 250112 ids, so token 250089 exists; tiny otherwise) and a small
mT5-style tokenizer trained on `texts`, for the tests that score with MetricX."""
from pathlib import Path

import torch

from model import MT5Config
from model.metricx import MT5ForRegression
from model.tiny import train_sentencepiece, write_mt5_style


def tiny_metricx(root: Path, texts: list[str], vocab: int = 300) -> tuple[Path, Path]:
    """(checkpoint folder, tokenizer folder) under `root`."""
    tok = write_mt5_style(root / "tok", train_sentencepiece(texts, vocab, hard_vocab_limit=False))
    torch.manual_seed(0)
    MT5ForRegression(MT5Config(vocab_size=250112, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                               relative_attention_num_buckets=8, tie_word_embeddings=False,
                               architectures=["MT5ForRegression"])).eval().save_pretrained(root / "model")
    return root / "model", tok
