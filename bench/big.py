"""The big checkpoints on a free CPU Space (16 GB): resident weights of mt0-xxl, umt5-xxl, aya-101 and MADLAD-400
under each precision, and the peak while loading them.

    python bench/big.py [--space-gb 16]

No weights are read: each model is built on PyTorch's meta device from its real config.json (the shapes below are
the Hub configs'), and every layer is swapped for the module this library would hold (model.quant's Int4Linear /
Int8Linear / embeddings, `wo` kept unquantized as QuantOptions.targets keeps it), so the bytes are those of the
buffers and parameters a loaded model has, not a formula. "Loading peak" adds the largest single tensor in the
unquantized dtype (the shared embedding, read and converted 64 MB of rows at a time, then quantized) and one
64 MB chunk: loading quantizes layer by layer (model/loading.py, measured on a 247 MB checkpoint in
tests/test_streaming_load.py), so it never holds the full-precision model. A configuration fits when the loading
peak, plus ~1.5 GB for Python, PyTorch and the app, stays under the Space's memory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu",
           tie_word_embeddings=False)
CHECKPOINTS = {   # name -> (family, config.json fields)
    "bigscience/mt0-xxl": ("mt5", dict(XXL, vocab_size=250112)),
    "CohereForAI/aya-101": ("t5", dict(XXL, vocab_size=250112)),
    "google/umt5-xxl": ("umt5", dict(XXL, vocab_size=256384)),
    "google/madlad400-3b-mt": ("t5", dict(d_model=1024, d_ff=8192, num_layers=32, num_heads=16, d_kv=128,
                                          vocab_size=256000, feed_forward_proj="gated-gelu",
                                          tie_word_embeddings=False, pad_token_id=1, eos_token_id=2)),
    "google/madlad400-7b-mt": ("t5", dict(d_model=2048, d_ff=8192, num_layers=48, num_heads=16, d_kv=128,
                                          vocab_size=256000, feed_forward_proj="gated-gelu",
                                          tie_word_embeddings=False, pad_token_id=1, eos_token_id=2)),
    "google/madlad400-10b-mt": ("t5", dict(d_model=2048, d_ff=16384, num_layers=32, num_heads=32, d_kv=128,
                                           vocab_size=256000, feed_forward_proj="gated-gelu",
                                           tie_word_embeddings=False, pad_token_id=1, eos_token_id=2)),
}
# label -> (dtype of what stays unquantized, from_pretrained options)
OPTIONS = {
    "fp32": ("float32", {}),
    "bf16": ("bfloat16", {}),
    "int8 layers, bf16 rest": ("bfloat16", dict(load_in_8bit=True)),
    "int8 all, bf16 wo": ("bfloat16", dict(load_in_8bit=True, quantize_embeddings=True)),
    "int4 all, bf16 wo": ("bfloat16", dict(load_in_4bit=True, bnb_4bit_quant_type="int4",
                                           quantize_embeddings=True)),
    "int4 all, fp32 wo": ("float32", dict(load_in_4bit=True, bnb_4bit_quant_type="int4",
                                          quantize_embeddings=True)),
}
RUNTIME_GB = 1.5


def resident(family: str, fields: dict, dtype: str, options: dict) -> tuple[int, int]:
    """(bytes the loaded model holds, bytes of its largest tensor in `dtype`), from meta-device modules."""
    import torch

    import model
    from model.config import config_class
    from model.quant import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear, QuantOptions

    config = config_class(family)(**fields)
    with torch.device("meta"):
        m = model.model_class(family, "generation")(config).to(getattr(torch, dtype))
    largest = max(p.numel() for p in m.parameters()) * getattr(torch, dtype).itemsize
    quant = QuantOptions.pop_from(dict(options))
    if quant is not None:
        for name in quant.targets(m):
            parent, _, leaf = name.rpartition(".")
            owner = m.get_submodule(parent) if parent else m
            old = getattr(owner, leaf)
            with torch.device("meta"):
                if isinstance(old, torch.nn.Embedding):
                    new = (Int8Embedding(old.num_embeddings, old.embedding_dim) if quant.quant_type == "int8"
                           else Int4Embedding(old.num_embeddings, old.embedding_dim, quant.group_size))
                else:
                    new = (Int8Linear(old.in_features, old.out_features) if quant.quant_type == "int8"
                           else Int4Linear(old.in_features, old.out_features, quant.group_size))
            setattr(owner, leaf, new)
    return m.get_memory_footprint(), largest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space-gb", type=float, default=16.0)
    args = ap.parse_args()
    budget = args.space_gb * 2 ** 30
    print(f"Resident weights / loading peak, GB (fits: loading peak + {RUNTIME_GB} GB runtime <= "
          f"{args.space_gb:g} GB)")
    print(f"{'checkpoint':<26}" + "".join(f"{label:>26}" for label in OPTIONS))
    for name, (family, fields) in CHECKPOINTS.items():
        cells = []
        for dtype, options in OPTIONS.values():
            kept, largest = resident(family, fields, dtype, options)
            peak = kept + largest + 64 * 2 ** 20     # the largest tensor before it is quantized, one chunk
            fits = "fits" if peak + RUNTIME_GB * 2 ** 30 <= budget else "no"
            cells.append(f"{kept / 2 ** 30:6.1f} / {peak / 2 ** 30:5.1f} {fits:>5}")
        print(f"{name:<26}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
