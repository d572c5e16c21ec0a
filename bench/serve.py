"""Concurrent visitors against the real app over HTTP: eight people pressing Summarize at once.

    python bench/serve.py [--shape mt5-small] [--visitors 8] [--tokens 32] [--repeat 2] [--preset greedy|xlsum]

A random-weight checkpoint of the given shape (bench/generate.py's) with the demo tokenizer, served by
`python app.py` (tests/apphost.py) on this machine, called through gradio_client's /summarize (greedy). Per
configuration: the solo time of one request, then `--visitors` requests sent at the same moment (one client
each). Printed: throughput against serving them one at a time (solo time each, in a line), the slowest
request's time against the solo time, and the batch sizes the server formed (the most rows decoded at once).
Then a staggered round: visitors press one after another, `--stagger` seconds apart, so most arrive while
others decode (the batcher lets plain greedy visitors join a running decode); printed: the slowest request's
time against the solo time. Configurations: the batcher on
(MT5_STUDIO_BATCH_VISITORS = visitors) and off (1: each visitor decoded alone, two at a time, the queue's
default slots).
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))          # bench/generate.py
sys.path.insert(0, str(HERE.parent))   # the project first: bench/app.py must not shadow the app package

from tests import apphost  # noqa: E402
from app.assets import load_assets  # noqa: E402
from generate import make_checkpoint  # noqa: E402  (after the app: it puts bench/ first on the path)

TOKENIZER_FILES = ("spiece.model", "special_tokens_map.json", "tokenizer_config.json")


def checkpoint(shape: str, work: Path) -> Path:
    """bench/generate.py's random-weight checkpoint, with the demo tokenizer's files beside it."""
    from model.tiny import build_demo_checkpoints

    path, _ = make_checkpoint(shape, work)
    demo = build_demo_checkpoints(work / "demo", load_assets().example_texts())
    tokenizer = demo["generation"]
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, path / name)
    return path


def texts(n: int) -> list[str]:
    rows = [e["text"] for e in load_assets().examples["summarization"]]
    return [rows[i % len(rows)] + f" ({i})" for i in range(n)]


DECODING = {"greedy": (1, None, None), "xlsum": (4, 2, 0.6)}   # beams, no_repeat_ngram_size, length_penalty
PRESET = ["greedy"]


def call(client, text: str, model: str, tokens: int) -> float:
    start = time.perf_counter()
    client.predict(text, model, tokens, *DECODING[PRESET[0]], api_name="/summarize")
    return time.perf_counter() - start


def batch_sizes(log: Path) -> list[int]:
    """The sizes of the batched decodes the server logged (app/batching.py), in order."""
    return [int(m) for m in re.findall(r"batched decode: (\d+) request", log.read_text(encoding="utf-8"))]


def run(path: Path, work: Path, batch: int, visitors: int, tokens: int, repeat: int, stagger: float) -> dict:
    from gradio_client import Client

    env = {"MT5_STUDIO_DEMO_DIR": str(work / "demo"), "MT5_STUDIO_DB": str(work / f"a{batch}.db"),
           "MT5_STUDIO_BATCH_VISITORS": str(batch), "OMP_NUM_THREADS": "2"}
    srv = apphost.start(work / f"server-{batch}.log", env=env, timeout=300)
    try:
        clients = [Client(srv.url, verbose=False, httpx_kwargs={"timeout": 900}) for _ in range(visitors)]
        rows = texts(visitors)
        call(clients[0], rows[0], str(path), tokens)                    # loads the model
        for c in clients[1:]:   # a client's first call sets up its connection (~1 s): visitors' pages have theirs
            call(c, rows[0], str(path), 1)
        solo = statistics.median(call(clients[0], rows[i % visitors], str(path), tokens)
                                 for i in range(max(2, repeat)))
        walls, worst, staggered = [], [], []
        logged = len(batch_sizes(srv.log))
        for round_ in range(repeat + 1):   # the last round staggered
            times: dict[int, float] = {}
            gate = threading.Barrier(visitors)
            delay = stagger if round_ == repeat else 0.0

            def visit(i):
                gate.wait()
                time.sleep(i * delay)
                times[i] = call(clients[i], rows[i], str(path), tokens)

            start = time.perf_counter()
            threads = [threading.Thread(target=visit, args=(i,)) for i in range(visitors)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(times) != visitors:
                raise RuntimeError(f"{visitors - len(times)} of {visitors} requests failed: see {srv.log}")
            if delay:
                staggered.append(max(times.values()))
                continue
            walls.append(time.perf_counter() - start)
            worst.append(max(times.values()))
        return {"solo": solo, "wall": statistics.median(walls), "worst": statistics.median(worst),
                "staggered": staggered[0], "batches": batch_sizes(srv.log)[logged:]}
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="mt5-small")
    ap.add_argument("--visitors", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--stagger", type=float, default=0.2, help="seconds between visitors in the staggered round")
    ap.add_argument("--workdir", default=None, help="where checkpoints are kept (default: a temporary folder)")
    ap.add_argument("--preset", choices=list(DECODING), default="greedy",
                    help="xlsum: csebuetnlp/mT5_multilingual_XLSum's beams (4 beams, no_repeat_ngram_size 2, "
                         "length_penalty 0.6); visitors with the same settings share one beam search")
    args = ap.parse_args()
    PRESET[0] = args.preset
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        path = checkpoint(args.shape, work)
        print(f"{args.shape} random weights, {args.visitors} visitors at once, {args.preset}, {args.tokens} new "
              f"tokens, through /summarize (gradio_client), median of {args.repeat}")
        print(f"{'configuration':<34}{'solo s':>8}{'all done s':>12}{'throughput vs line':>20}"
              f"{'slowest / solo':>16}{'staggered':>11}")
        for label, batch in (("batched (BATCH_VISITORS=%d)" % args.visitors, args.visitors),
                             ("alone, 2 slots (BATCH_VISITORS=1)", 1)):
            r = run(path, work, batch, args.visitors, args.tokens, args.repeat, args.stagger)
            line = args.visitors * r["solo"]          # one at a time, each taking the solo time
            print(f"{label:<34}{r['solo']:>8.2f}{r['wall']:>12.2f}{line / r['wall']:>19.2f}x"
                  f"{r['worst'] / r['solo']:>15.2f}x{r['staggered'] / r['solo']:>10.2f}x"
                  f"   batches {r['batches'] or 'none (each alone)'}")


if __name__ == "__main__":
    main()
