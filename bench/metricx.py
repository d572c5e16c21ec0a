"""MetricX-24 scoring speed: ours (model.metricx, fp32 / bf16 / int8) vs transformers 4.57 running MetricX's own
recipe (MT5ForConditionalGeneration, one decoder step from token 0, the logit of token 250089) on the same ids.

    python bench/metricx.py [--layers N] [--segments 32] [--tokens 100] [--batch 16]

A random checkpoint of MetricX-24 Large's shape (mT5-large: d_model 1024, d_ff 2816, 24+24 layers, 16 heads,
vocabulary 250112; `architectures: ["MT5ForRegression"]`) is built once under --workdir (--layers for a
reduced-depth copy). Each side runs in its own subprocess at 2 threads (transformers in .venv-ref) on the same
random segments of --tokens tokens, in batches of --batch; the scores are compared. Printed: seconds per segment,
the ratio to transformers at the same dtype, and the memory-bandwidth floor (reading the weights once per batch,
bench/floor.py) per segment. The target of issue 25: int8 ≤ 0.5 s per 100-token segment in batches of 16.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import floor  # noqa: E402

REF_PYTHON = Path(os.environ.get("MT5_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
LARGE = dict(d_model=1024, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16, d_kv=64,
             vocab_size=250112, feed_forward_proj="gated-gelu", tie_word_embeddings=False)

BUILD = """
import sys, torch
sys.path.insert(0, {root!r})
from model import MT5Config
from model.metricx import MT5ForRegression
torch.manual_seed(0)
config = MT5Config(**{fields!r}, architectures=["MT5ForRegression"])
model = MT5ForRegression(config)
with torch.no_grad():   # scores inside (0, 25), as a trained MetricX gives, so the clamp hides nothing
    model.lm_head.weight[250089] *= 0.05
    model.lm_head.weight[250089] += 0.02
model.save_pretrained({path!r})
print("{{}}")
"""

OURS = """
import json, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
from model.metricx import MT5ForRegression, score_ids
rows = torch.load({ids!r})
options = {options!r}
model = MT5ForRegression.from_pretrained({path!r}, **options).eval()
score_ids(model, rows[:2], 2)                      # warm-up: kernels' packs
start = time.perf_counter()
scores = score_ids(model, rows, {batch})
print(json.dumps(dict(seconds=time.perf_counter() - start, scores=scores)))
"""

REFERENCE = """
import json, sys, time, torch
torch.set_num_threads(2)
from transformers import MT5ForConditionalGeneration
rows = torch.load({ids!r})
model = MT5ForConditionalGeneration.from_pretrained({path!r}, torch_dtype=getattr(torch, {dtype!r})).eval()

def run(batch):
    width = max(len(r) for r in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for j, r in enumerate(batch):
        ids[j, :len(r)] = torch.tensor(r)
        mask[j, :len(r)] = 1
    with torch.no_grad():   # MetricX's forward: decoder input 0, one step, logit 250089, clamped
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.zeros((len(batch), 1),
                       dtype=torch.long)).logits
    return torch.clamp(logits[:, 0, 250089].float(), 0, 25).tolist()

run(rows[:2])
start = time.perf_counter()
scores = [s for k in range(0, len(rows), {batch}) for s in run(rows[k:k + {batch}])]
print(json.dumps(dict(seconds=time.perf_counter() - start, scores=scores)))
"""


def child(python: Path | str, code: str) -> dict:
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=None, help="a reduced-depth copy (default: all 24+24)")
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workdir", default="/tmp/mt5-bench-metricx")
    args = ap.parse_args()
    import torch

    fields = dict(LARGE, **({"num_layers": args.layers, "num_decoder_layers": args.layers} if args.layers else {}))
    path = Path(args.workdir) / f"metricx-large-{args.layers or 'full'}"
    if not (path / "config.json").is_file():
        child(sys.executable, BUILD.format(root=str(ROOT), fields=fields, path=str(path)))
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 250000, (args.tokens - 1 - k % 7,), generator=gen).tolist()   # lengths differ a little
            for k in range(args.segments)]
    ids_file = Path(args.workdir) / "ids.pt"
    torch.save(rows, ids_file)
    bw = floor.bandwidth()
    d, inner = fields["d_model"], fields["num_heads"] * fields["d_kv"]
    params = (fields["vocab_size"] * d * 2                                              # shared + lm_head
              + fields["num_layers"] * (4 * d * inner + 3 * d * fields["d_ff"])                # attention, gated FFN
              + fields["num_decoder_layers"] * (8 * d * inner + 3 * d * fields["d_ff"]))    # + cross-attention
    print(f"MetricX-24 Large shape ({fields['num_layers']}+{fields['num_decoder_layers']} layers), {args.segments} "
          f"segments of ~{args.tokens} tokens, batches of {args.batch}, 2 threads; bandwidth {bw / 1e9:.1f} GB/s")
    print(f"{'':<8}{'ours s/seg':>12}{'transformers':>14}{'ratio':>8}{'floor s/seg':>13}{'max |Δ score|':>15}")
    for label, options, dtype, width in (("fp32", {}, "float32", 4), ("bf16", {"dtype": "bfloat16"}, "bfloat16", 2),
                                         ("int8", {"load_in_8bit": True}, None, 1)):
        ours = child(sys.executable, OURS.format(root=str(ROOT), ids=str(ids_file), options=options, path=str(path),
                                                 batch=args.batch))
        ref = child(REF_PYTHON, REFERENCE.format(ids=str(ids_file), path=str(path), dtype=dtype, batch=args.batch)) \
            if dtype and REF_PYTHON.exists() else None
        per = ours["seconds"] / args.segments
        floor_s = params * width / bw / args.batch
        if label == "fp32":
            exact = ours["scores"]
        if ref is None:   # transformers has no int8 of its own on the CPU: ours against our fp32 scores
            diff = max(abs(a - b) for a, b in zip(ours["scores"], exact))
            print(f"{label:<8}{per:>12.3f}{'—':>14}{'—':>8}{floor_s:>13.4f}{diff:>15.2e}  (against our fp32)")
            continue
        ref_per = ref["seconds"] / args.segments
        diff = max(abs(a - b) for a, b in zip(ours["scores"], ref["scores"]))
        print(f"{label:<8}{per:>12.3f}{ref_per:>14.3f}{per / ref_per:>8.2f}{floor_s:>13.4f}{diff:>15.2e}")


if __name__ == "__main__":
    main()
