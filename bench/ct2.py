"""CTranslate2 as a third peer in the benchmarks: conversion and timing, run in .venv-ref.

CTranslate2's converter loads the checkpoint with transformers (which lives in .venv-ref) and reads its
vocabulary from the tokenizer. The random-weight benchmark checkpoints have no tokenizer (a 250k-piece
`spiece.model` cannot be downloaded here), so the converter gets a stand-in tokenizer whose tokens are
`<pad>`, `</s>`, `<unk>`, then `t3` … `t{vocab-1}`: the benchmarks feed ids, which map one to one to these
strings, so CTranslate2 decodes exactly the ids our models get. The checkpoint is converted once in fp32;
int8 is CTranslate2's own quantization at load time (`compute_type="int8"`), as its users run it.

Used by bench/generate.py (impl `ct2-float32` / `ct2-int8`, through `Runner`) and bench/memory.py
(row "CTranslate2 int8").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECIAL = ["<pad>", "</s>", "<unk>"]


def available(python: Path) -> bool:
    """Whether .venv-ref has ctranslate2 (`bash .ci/setup-reference` installs it)."""
    return python.exists() and subprocess.run([str(python), "-c", "import ctranslate2"],
                                              capture_output=True).returncode == 0


def converted(checkpoint: Path, python: Path) -> Path:
    """The CTranslate2 model of `checkpoint` (converted on first use, next to it)."""
    out = checkpoint.parent / f"{checkpoint.name}-ct2"
    if not (out / "model.bin").exists():
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(HF_HUB_OFFLINE="1")
        proc = subprocess.run([str(python), __file__, "convert", str(checkpoint), str(out)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(f"CTranslate2 conversion failed: {proc.stderr[-2000:]}")
    return out


def convert(checkpoint: str, out: str) -> None:
    from ctranslate2.converters.transformers import TransformersConverter

    vocab_size = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]

    class IdTokenizer:
        pad_token, eos_token, unk_token = SPECIAL

        def __init__(self):
            self.tokens = SPECIAL + [f"t{i}" for i in range(len(SPECIAL), vocab_size)]

        def get_vocab(self):
            return {t: i for i, t in enumerate(self.tokens)}

        def convert_ids_to_tokens(self, i):
            return self.tokens[i]

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return IdTokenizer()

    Converter(checkpoint, low_cpu_mem_usage=True).convert(out, force=True)


class Runner:
    """A loaded CTranslate2 translator that takes and returns token ids (with the decoder start token first,
    as `generate()` returns them)."""

    def __init__(self, path: str, compute_type: str):
        import ctranslate2

        self.translator = ctranslate2.Translator(path, device="cpu", compute_type=compute_type, intra_threads=2,
                                                 inter_threads=1)
        self.vocab = json.loads((Path(path) / "shared_vocabulary.json").read_text(encoding="utf-8"))
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def sources(self, ids, mask) -> list[list[str]]:
        return [[self.vocab[i] for i, m in zip(row.tolist(), keep.tolist()) if m] for row, keep in zip(ids, mask)]

    def generate(self, ids, mask, new_tokens: int, beams: int = 1) -> list[list[int]]:
        results = self.translator.translate_batch(self.sources(ids, mask), beam_size=beams,
                                                  max_decoding_length=new_tokens, min_decoding_length=new_tokens)
        return [[0] + [self.index[t] for t in r.hypotheses[0]] for r in results]

    def generate_like(self, ids, mask, settings: dict) -> list[list[int]]:
        """`generate()`'s settings as bench/generate.py's cases use them (max/min_new_tokens or max_length,
        num_beams, no_repeat_ngram_size, length_penalty) mapped to translate_batch's."""
        if "max_length" in settings:      # transformers counts the decoder start token, CTranslate2 does not
            limits = dict(max_decoding_length=settings["max_length"] - 1)
        else:
            limits = dict(max_decoding_length=settings["max_new_tokens"],
                          min_decoding_length=settings.get("min_new_tokens", 0))
        results = self.translator.translate_batch(
            self.sources(ids, mask), beam_size=settings.get("num_beams", 1),
            no_repeat_ngram_size=settings.get("no_repeat_ngram_size", 0),
            length_penalty=settings.get("length_penalty", 1.0), **limits)
        return [[0] + [self.index[t] for t in r.hypotheses[0]] for r in results]

    def next_tokens(self, ids, mask, prefix: list[int]) -> list[int]:
        """The argmax after every prefix of `prefix` (decoder start token excluded), teacher-forced: one batch
        whose row k is forced through prefix[:k] and takes one free step."""
        source = self.sources(ids, mask)[0]
        words = [self.vocab[i] for i in prefix]
        results = self.translator.translate_batch([source] * (len(prefix) + 1),
                                                  target_prefix=[words[:k] for k in range(len(prefix) + 1)],
                                                  beam_size=1, max_decoding_length=len(prefix) + 1,
                                                  return_end_token=True)
        return [self.index[r.hypotheses[0][k]] for k, r in enumerate(results)]


def rss_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(path: str, compute_type: str, ids, tokens: int, reference: list[int], expected: list[int]) -> dict:
    """bench/memory.py's row: resident memory added by loading, greedy speed, and teacher-forced top-1
    agreement with our fp32: forced along `reference` (fp32's greedy sequence, decoder start token first), the
    argmax at each position against `expected` (fp32's). CTranslate2 returns log-probabilities, not logits,
    so no logit error."""
    sys.path.insert(0, str(HERE))
    from load import rss_now

    import torch

    base = rss_now()
    runner = Runner(path, compute_type)
    loaded = rss_now() - base
    mask = torch.ones_like(ids)
    runner.generate(ids, mask, 2)
    start = time.perf_counter()
    runner.generate(ids, mask, tokens)
    seconds = time.perf_counter() - start
    predicted = runner.next_tokens(ids, mask, reference[1:-1])
    agree = sum(p == e for p, e in zip(predicted, expected)) / len(expected)
    return {"rss_loaded": loaded, "weights": None, "peak": rss_peak() - base, "tok_s": tokens / seconds,
            "ms_token": seconds / tokens * 1e3, "logit_err": None, "agree": agree}


if __name__ == "__main__":
    if sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3])
