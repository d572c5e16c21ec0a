"""Load time and peak memory (load, then read every weight once): ours vs transformers 4.57 on an
mt5-small-shaped random checkpoint (1.2 GB fp32).

    python bench/load.py [--workdir /tmp/mt5-bench-load] [--repeat 3]

Each load runs in a fresh subprocess (ours in this interpreter, transformers in .venv-ref, see
`bash .ci/setup-reference`), alternating, best of --repeat. Peak RSS is the process's high-water mark; "added"
subtracts what the process held after its imports, so it measures the load alone.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("MT5_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(kind: str, path: str) -> None:
    """Runs in the subprocess: import, then time one from_pretrained; prints JSON."""
    import torch

    torch.set_num_threads(2)
    if kind == "ours":
        sys.path.insert(0, str(ROOT))
        from model import MT5ForConditionalGeneration
    else:
        from transformers import MT5ForConditionalGeneration
    base = rss_now()
    start = time.perf_counter()
    m = MT5ForConditionalGeneration.from_pretrained(path)
    seconds = time.perf_counter() - start
    # Both sides may map the file lazily: read every weight once, as the first forward pass would.
    with torch.no_grad():
        for p in m.parameters():
            p.sum()
    touched = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in m.parameters()}.values())
    print(json.dumps({"seconds": seconds, "touched": touched, "peak": peak, "base": base, "weights": n_bytes}))


def make_checkpoints(workdir: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    import torch

    from model import MT5Config, MT5ForConditionalGeneration

    dirs = {"safetensors": workdir / "safetensors", "bin": workdir / "bin"}
    if all((d / "config.json").exists() for d in dirs.values()):
        return dirs
    torch.manual_seed(0)
    m = MT5ForConditionalGeneration(MT5Config())
    m.save_pretrained(dirs["safetensors"])
    m.save_pretrained(dirs["bin"], safe_serialization=False)
    return dirs


def measure(kind: str, path: Path) -> dict:
    python = sys.executable if kind == "ours" else str(REF_PYTHON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_HUB_OFFLINE"] = "1"
    # drop the page cache's advantage for neither side: both read the same, already cached files
    out = subprocess.run([python, __file__, "--child", kind, str(path)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/mt5-bench-load")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if not REF_PYTHON.exists():
        sys.exit(f"{REF_PYTHON} missing: run `bash .ci/setup-reference` first")
    dirs = make_checkpoints(Path(args.workdir))
    gb = 1e9
    print(f"{'format':<12} {'impl':<13} {'load s':>7} {'+read s':>8} {'peak RSS GB':>12} {'added GB':>9} "
          f"{'added/weights':>14}")
    for fmt, path in dirs.items():
        best = {}
        for _ in range(args.repeat):
            for kind in ("ours", "transformers"):
                r = measure(kind, path)
                if kind not in best or r["touched"] < best[kind]["touched"]:
                    best[kind] = r
        for kind, r in best.items():
            added = r["peak"] - r["base"]
            print(f"{fmt:<12} {kind:<13} {r['seconds']:7.2f} {r['touched']:8.2f} {r['peak'] / gb:12.2f} "
                  f"{added / gb:9.2f} {added / r['weights']:14.2f}")
        ratio = best["transformers"]["touched"] / best["ours"]["touched"]
        print(f"{fmt:<12} load+read: ours is {ratio:.2f}x transformers' speed; "
              f"weights {best['ours']['weights'] / gb:.2f} GB")


if __name__ == "__main__":
    main()
