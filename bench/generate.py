"""Generation speed: ours vs transformers 4.57 `generate()` on random-weight mt5-small, umt5-small and mt5-base.

    python bench/generate.py [--shapes mt5-small,umt5-small,mt5-base] [--repeat 2] [--dtype float32]

2 threads, fp32, fixed seeds; every case generates exactly 64 new tokens (eos is banned until then) so both sides
do the same work. Each implementation runs in its own subprocess (transformers in .venv-ref) so peak RSS is its
own; the table prints both and the ratio. CTranslate2 (fp32 and int8, also in .venv-ref; bench/ct2.py) is
measured on the same ids when .venv-ref has it, and printed with our ratio against it. Cases: greedy batch 1
(128-token input), greedy batch 8 (inputs of 64-128 tokens, padded), beam 4 batch 1, and the encoder alone at
512 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import ct2  # noqa: E402

REF_PYTHON = Path(os.environ.get("MT5_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
SHAPES = {
    "mt5-small": ("mt5", dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, vocab_size=250112)),
    "umt5-small": ("umt5", dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, vocab_size=256384,
                                tie_word_embeddings=False)),
    "mt5-base": ("mt5", dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, vocab_size=250112)),
}
NEW_TOKENS = 64


def inputs(batch: int, lengths: tuple[int, int], vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (batch,), generator=g).tolist()
    width = max(sizes)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, n in enumerate(sizes):
        ids[i, :n] = torch.randint(3, min(vocab, 250000), (n,), generator=g)
        ids[i, n - 1] = 1
        mask[i, :n] = 1
    return ids, mask


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: first-call allocations and MKL setup are not what users feel on every request
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def child(impl: str, path: str, family: str, repeat: int, dtype: str) -> None:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    prefix = "UMT5" if family == "umt5" else "MT5"
    config = json.loads((Path(path) / "config.json").read_text())   # a CTranslate2 model's has no vocab_size
    vocab = config.get("vocab_size") or len(json.loads((Path(path) / "shared_vocabulary.json").read_text()))
    fixed = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    cases = {
        "greedy_b1": (inputs(1, (128, 128), vocab, 1), dict(fixed)),
        "greedy_b8": (inputs(8, (64, 128), vocab, 2), dict(fixed)),
        "beam4_b1": (inputs(1, (128, 128), vocab, 3), dict(fixed, num_beams=4)),
    }
    if impl.startswith("ct2-"):   # no encoder-only call in CTranslate2: no encoder_512
        runner = ct2.Runner(path, impl.removeprefix("ct2-"))
        results = time_cases(cases, repeat, lambda ids, mask, kw: runner.generate(ids, mask, NEW_TOKENS,
                                                                                  kw.get("num_beams", 1)))
    else:
        if impl == "ours":
            sys.path.insert(0, str(ROOT))
            import model as lib
        else:
            import transformers as lib
        cls = getattr(lib, prefix + "ForConditionalGeneration")
        m = cls.from_pretrained(path, torch_dtype=getattr(torch, dtype)).eval()
        with torch.no_grad():
            results = time_cases(cases, repeat, lambda ids, mask, kw: m.generate(input_ids=ids, attention_mask=mask,
                                                                                 **kw))
            ids, mask = inputs(1, (512, 512), vocab, 4)
            encoder = m.get_encoder() if impl == "transformers" else None
            run_enc = ((lambda: encoder(input_ids=ids, attention_mask=mask)) if encoder
                       else (lambda: m.encode(ids, mask)))
            results["encoder_512"] = {"seconds": timed(run_enc, repeat)}
    results["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(results))


def time_cases(cases: dict, repeat: int, generate: Callable) -> dict:
    """Times `generate(ids, mask, kwargs)` (sequences, decoder start token first) on every case."""
    results = {}
    for name, ((ids, mask), kwargs) in cases.items():
        out = {}

        def run():
            out["seq"] = generate(ids, mask, kwargs)

        seconds = timed(run, repeat)
        tokens = NEW_TOKENS * ids.shape[0]
        results[name] = {"seconds": seconds, "tok_s": tokens / seconds, "ms_token": seconds / NEW_TOKENS * 1e3,
                         "first": [int(t) for t in out["seq"][0][:12]]}
    return results


def make_checkpoint(shape: str, workdir: Path) -> tuple[Path, str]:
    family, cfg = SHAPES[shape]
    path = workdir / shape
    if (path / "config.json").exists():
        return path, family
    sys.path.insert(0, str(ROOT))
    import torch

    import model

    torch.manual_seed(0)
    config = (model.UMT5Config if family == "umt5" else model.MT5Config)(**cfg)
    model.model_class(family, "generation")(config).save_pretrained(path)
    return path, family


def measure(impl: str, path: Path, family: str, repeat: int, dtype: str) -> dict:
    python = sys.executable if impl == "ours" else str(REF_PYTHON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([python, __file__, "--child", impl, str(path), family, str(repeat), dtype],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compared(ours: dict, peer: dict):
    """(case, ours, theirs, "same tokens" | "tokens differ") for every generation case."""
    for case in ("greedy_b1", "greedy_b8", "beam4_b1"):
        o, r = ours[case], peer[case]
        yield case, o, r, "same tokens" if o["first"] == r["first"] else "tokens differ"


def report(shape: str, ours: dict, ref: dict, peers: dict[str, dict]) -> None:
    print(f"\n{shape}  (ours | transformers 4.57 | ratio)")
    for case, o, r, same in compared(ours, ref):
        print(f"  {case:<12} {o['tok_s']:7.1f} tok/s {o['ms_token']:7.1f} ms/step | {r['tok_s']:7.1f} tok/s "
              f"{r['ms_token']:7.1f} ms/step | {o['tok_s'] / r['tok_s']:5.2f}x  ({same})")
    o, r = ours["encoder_512"]["seconds"], ref["encoder_512"]["seconds"]
    print(f"  {'encoder_512':<12} {o * 1e3:7.1f} ms | {r * 1e3:7.1f} ms | {r / o:5.2f}x")
    print(f"  {'peak RSS':<12} {ours['peak_rss'] / 1e9:7.2f} GB | {ref['peak_rss'] / 1e9:7.2f} GB | "
          f"{ours['peak_rss'] / ref['peak_rss']:5.2f}x of theirs")
    for name, peer in peers.items():
        print(f"  against {name}  (ours | theirs | ratio; tokens compared with ours)")
        for case, o, r, same in compared(ours, peer):
            print(f"    {case:<10} {o['ms_token']:7.1f} ms/step | {r['ms_token']:7.1f} ms/step | "
                  f"{o['tok_s'] / r['tok_s']:5.2f}x  ({same})")
        print(f"    {'peak RSS':<10} {ours['peak_rss'] / 1e9:7.2f} GB | {peer['peak_rss'] / 1e9:7.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workdir", default="/tmp/mt5-bench-generate")
    ap.add_argument("--only", choices=["ours", "transformers", "ct2-float32", "ct2-int8"])
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2")
    ap.add_argument("--child", nargs=5)
    args = ap.parse_args()
    if args.child:
        impl, path, family, repeat, dtype = args.child
        return child(impl, path, family, int(repeat), dtype)
    if not REF_PYTHON.exists():
        sys.exit(f"{REF_PYTHON} missing: run `bash .ci/setup-reference` first")
    print(f"{NEW_TOKENS} new tokens per row, 2 threads, {args.dtype}, best of {args.repeat} after a warm-up")
    for shape in args.shapes.split(","):
        path, family = make_checkpoint(shape, Path(args.workdir))
        impls = [args.only] if args.only else ["ours", "transformers"]
        with_ct2 = not (args.only or args.no_ct2) and args.dtype == "float32"
        if with_ct2 and not ct2.available(REF_PYTHON):
            print(f"(CTranslate2 skipped: not in {REF_PYTHON}; `bash .ci/setup-reference` installs it)")
            with_ct2 = False
        if with_ct2:
            impls += ["ct2-float32", "ct2-int8"]
        res = {}
        for impl in impls:
            where = ct2.converted(path, REF_PYTHON) if impl.startswith("ct2-") else path
            res[impl] = measure(impl, where, family, args.repeat, args.dtype)
        if args.only:
            print(shape, json.dumps(res))
        else:
            peers = {f"CTranslate2 {impl[4:]}": res[impl] for impl in impls if impl.startswith("ct2-")}
            report(shape, res["ours"], res["transformers"], peers)


if __name__ == "__main__":
    main()
