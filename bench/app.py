"""The app's user-facing latencies: page load, and time to the first streamed summary token.

    python bench/app.py                 # demo checkpoints (random weights), offline
    python bench/app.py --model DIR     # a real checkpoint (Hub id or local folder) for the in-process numbers

Prints (not asserted anywhere):
- in-process: loading the checkpoint, and time to the first streamed piece of text / to the whole summary
  (`app.tasks.stream_summary`, greedy);
- through the real server: the page's load time (HTTP, and in chromium when Playwright is installed) and, in
  the browser, the time from clicking "Summarize" to the first text in the summary box.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import apphost as server  # noqa: E402
from app.assets import load_assets  # noqa: E402
from app.demo import build_demo  # noqa: E402
from app.models import ModelRequest, load_checkpoint  # noqa: E402
from app.tasks import Decoding, stream_summary  # noqa: E402

TEXT_ROW = 0  # the English summarization example


def in_process(source: str, text: str, runs: int, max_new_tokens: int) -> None:
    start = time.perf_counter()
    loaded = load_checkpoint(ModelRequest(source))
    print(f"load {source}: {time.perf_counter() - start:.2f} s")
    first, total = [], []
    for _ in range(runs):
        start = time.perf_counter()
        seen = None
        for step in stream_summary(loaded, text, Decoding(num_beams=1, do_sample=False,
                                                           max_new_tokens=max_new_tokens)):
            if seen is None and step.text:
                seen = time.perf_counter() - start
        total.append(time.perf_counter() - start)
        first.append(seen if seen is not None else total[-1])
    print(f"in-process, greedy, {max_new_tokens} new tokens max, median of {runs}: first text "
          f"{1000 * statistics.median(first):.0f} ms, whole summary {1000 * statistics.median(total):.0f} ms")


def through_server(text: str, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        srv = server.start(Path(tmp) / "server.log", env={"MT5_STUDIO_DEMO_DIR": str(Path(tmp) / "demo")})
        print(f"server start (demo mode, incl. building checkpoints): {time.perf_counter() - start:.2f} s")
        try:
            loads = []
            for _ in range(runs):
                start = time.perf_counter()
                with urllib.request.urlopen(srv.url + "/") as response:
                    response.read()
                loads.append(time.perf_counter() - start)
            print(f"page HTML over HTTP, median of {runs}: {1000 * statistics.median(loads):.0f} ms")
            in_browser(srv.url, text, runs)
        finally:
            srv.stop()


def in_browser(url: str, text: str, runs: int) -> None:
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("browser numbers skipped: run .ci/setup-browser for chromium and playwright")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        loads, first = [], []
        for _ in range(runs):
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("#summarize-run")
            loads.append(time.perf_counter() - start)
            page.locator("#summarize-input textarea").fill(text)
            start = time.perf_counter()
            page.click("#summarize-run")
            page.wait_for_function("() => document.querySelector('#summarize-output textarea').value.length > 0",
                                   timeout=60_000)
            first.append(time.perf_counter() - start)
            page.close()
        browser.close()
    print(f"page load in chromium until interactive, median of {runs}: {1000 * statistics.median(loads):.0f} ms")
    print(f"click → first summary text in the page, median of {runs}: {1000 * statistics.median(first):.0f} ms "
          "(the first includes loading the model)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint for the in-process numbers (default: the demo's)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--no-server", action="store_true", help="in-process numbers only")
    args = ap.parse_args()
    assets = load_assets()
    text = assets.examples["summarization"][TEXT_ROW]["text"]
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or str(build_demo(assets, Path(tmp))["generation"])
        in_process(source, text, args.runs, args.max_new_tokens)
    if not args.no_server:
        through_server(text, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
