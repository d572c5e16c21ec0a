"""The memory-bandwidth floor of a decoding step: how long reading the weights once would take on this machine.

A decoding step of an encoder-decoder reads every decoder weight and the whole output projection once (all
beams and batch rows share that read); at batch 1 it is memory-bound, so bytes / bandwidth is the physical limit
of a step. `bandwidth()` measures the streaming read rate once per run: the best of a few reads of a 1 GiB
buffer (larger than this machine's caches, L3 included), each read by a kernel that does ~nothing per byte.

Used by bench/generate.py (a floor next to every case) and bench/memory.py (a floor per configuration).
"""
from __future__ import annotations

import time

BUFFER_BYTES = 2 ** 30


def bandwidth(threads: int = 2, repeat: int = 5) -> float:
    """Streaming read bandwidth in bytes/s with `threads` threads: the best over `repeat` reads and 3 kernels
    (sum, a dot product, a matrix-vector product, which is how a batch-1 head reads its weight)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(BUFFER_BYTES // 4)
        rows = buf.view(-1, 512)
        vec = torch.ones(512)
        best = float("inf")
        for read in (buf.sum, lambda: torch.dot(buf, buf), lambda: rows @ vec):
            read()
            for _ in range(repeat):
                start = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - start)
        return BUFFER_BYTES / best
    finally:
        torch.set_num_threads(before)


def step_weights(cfg: dict, bytes_per_weight: float = 4.0) -> float:
    """Bytes of weights one decoder step reads: every decoder block, the final norm and the output projection
    (an embedding lookup reads one row: ignored). `cfg` holds config.json's fields."""
    d, heads = cfg["d_model"], cfg.get("num_heads", 8)
    inner = heads * cfg.get("d_kv", 64)
    layers = cfg.get("num_decoder_layers") or cfg.get("num_layers", 8)
    gated = str(cfg.get("feed_forward_proj", "gated-gelu")).startswith("gated")
    ffn = (3 if gated else 2) * d * cfg["d_ff"]
    attention = 2 * 4 * d * inner                         # self- and cross-attention q, k, v, o
    per_block = attention + ffn + 3 * d                    # + 3 norms
    return (layers * per_block + d + cfg["vocab_size"] * d) * bytes_per_weight


def floor_ms(cfg: dict, bandwidth_bytes_s: float, bytes_per_weight: float = 4.0) -> float:
    """ms per decoding step that reading the weights once takes at `bandwidth_bytes_s`."""
    return step_weights(cfg, bytes_per_weight) / bandwidth_bytes_s * 1e3
