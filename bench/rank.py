"""Rank classification: the cost of K answer choices against one, on a random-weight mT5 checkpoint.

    python bench/rank.py [--shapes mt5-small,mt5-base] [--repeat 5] [--prompt-tokens 128]

`model.ranking.rank_choices` encodes the prompt once and scores all K choices in one decoder batch, computing
the output projection once per distinct decoder state. Issue 15's target: 10 labels cost at most 1.5x one label.
The labels are 1-3 tokens long (plus `</s>`), as class names are; the prompt is --prompt-tokens random ids.
Timings alternate between the label counts, best of --repeat, 2 threads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from generate import make_checkpoint  # noqa: E402


class IdTokenizer:
    """Texts are space-separated token ids; `</s>` (1) appended unless add_special_tokens=False."""
    pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(t) for t in text.split()] + ([1] if add_special_tokens else [])


def main() -> None:
    import torch

    from model import MT5ForConditionalGeneration
    from model.ranking import rank_choices

    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mt5-small,mt5-base")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--workdir", default="/tmp/mt5-bench-generate")
    args = ap.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    prompt = " ".join(str(i) for i in torch.randint(3, 250000, (args.prompt_tokens,), generator=g).tolist())
    labels = [" ".join(str(i) for i in torch.randint(3, 250000, (1 + n % 3,), generator=g).tolist())
              for n in range(10)]
    tok = IdTokenizer()
    print(f"rank classification, {args.prompt_tokens}-token prompt, labels of 1-3 tokens + </s>, 2 threads, "
          f"best of {args.repeat}")
    for shape in args.shapes.split(","):
        path, _ = make_checkpoint(shape, Path(args.workdir))
        m = MT5ForConditionalGeneration.from_pretrained(path).eval()
        counts = (1, 2, 5, 10)
        best = {k: float("inf") for k in counts}
        for k in counts:
            rank_choices(m, tok, prompt, labels[:k])   # warm-up
        for _ in range(args.repeat):
            for k in counts:
                start = time.perf_counter()
                rank_choices(m, tok, prompt, labels[:k])
                best[k] = min(best[k], time.perf_counter() - start)
        line = " | ".join(f"{k} label{'s' * (k > 1)} {best[k] * 1e3:6.1f} ms ({best[k] / best[1]:.2f}x)"
                          for k in counts)
        print(f"  {shape:<10} {line}   (target: 10 labels <= 1.50x)")
        del m


if __name__ == "__main__":
    main()
