"""Generation speed: ours vs transformers 4.57 `generate()` on random-weight mt5-small, umt5-small and mt5-base.

    python bench/generate.py [--shapes mt5-small,umt5-small,mt5-base] [--repeat 2] [--dtype float32]

2 threads, fp32, fixed seeds. Cases: greedy batch 1 (128-token input), greedy batch 8 (inputs of 64-128 tokens,
padded), beam 4 batch 1, each exactly 64 new tokens (eos is banned until then) so every side does the same work;
the XLSum preset (csebuetnlp/mT5_multilingual_XLSum's decoding settings: 4 beams, no_repeat_ngram_size 2,
length_penalty 0.6, max_length 84) on a 128-token input; and the encoder alone at 512 tokens. ms/step is the
whole call (encoder included) over the tokens generated.

Ours runs twice: exact (fp32 tokens; beams on the certified int8 screen) and fast mode (`fast_decoding=True`:
int8 decoder and head, tokens may differ), with fast mode's top-1 agreement with the exact model printed.
Each implementation runs in its own subprocess (transformers in .venv-ref) so peak RSS is its own. CTranslate2
(fp32 and int8, also in .venv-ref; bench/ct2.py) is measured on the same ids when .venv-ref has it. Every row
compares all generated tokens of every batch row with ours. The floor (bench/floor.py) is the time reading the
decoder's weights and the output projection once takes at this machine's streaming bandwidth, measured once per
run: the physical limit of a memory-bound step, fp32 (and int8, for CTranslate2 int8).
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
import floor  # noqa: E402

REF_PYTHON = Path(os.environ.get("MT5_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
SHAPES = {
    "mt5-small": ("mt5", dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, vocab_size=250112)),
    "umt5-small": ("umt5", dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, vocab_size=256384,
                                tie_word_embeddings=False)),
    "mt5-base": ("mt5", dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, vocab_size=250112)),
}
NEW_TOKENS = 64
XLSUM = dict(num_beams=4, no_repeat_ngram_size=2, length_penalty=0.6, max_length=84)
CASES = ("greedy_b1", "greedy_b8", "beam4_b1", "xlsum_b1")


def cases(vocab: int) -> dict:
    """name -> ((ids, mask), generate() settings)."""
    fixed = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return {
        "greedy_b1": (inputs(1, (128, 128), vocab, 1), dict(fixed)),
        "greedy_b8": (inputs(8, (64, 128), vocab, 2), dict(fixed)),
        "beam4_b1": (inputs(1, (128, 128), vocab, 3), dict(fixed, num_beams=4)),
        "xlsum_b1": (inputs(1, (128, 128), vocab, 5), dict(XLSUM)),
    }


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
    if impl.startswith("ct2-"):   # no encoder-only call in CTranslate2: no encoder_512
        runner = ct2.Runner(path, impl.removeprefix("ct2-"))
        results = time_cases(cases(vocab), repeat, runner.generate_like)
    else:
        if impl.startswith("ours"):
            sys.path.insert(0, str(ROOT))
            import model as lib
        else:
            import transformers as lib
        cls = getattr(lib, prefix + "ForConditionalGeneration")
        fast = dict(fast_decoding=True) if impl == "ours-fast" else {}
        m = cls.from_pretrained(path, torch_dtype=getattr(torch, dtype), **fast).eval()
        screens = watch_screens() if impl == "ours" else None
        with torch.no_grad():
            results = time_cases(cases(vocab), repeat,
                                 lambda ids, mask, kw: m.generate(input_ids=ids, attention_mask=mask, **kw),
                                 screens)
            ids, mask = inputs(1, (512, 512), vocab, 4)
            encoder = m.get_encoder() if impl == "transformers" else None
            run_enc = ((lambda: encoder(input_ids=ids, attention_mask=mask)) if encoder
                       else (lambda: m.encode(ids, mask)))
            results["encoder_512"] = {"seconds": timed(run_enc, repeat)}
    results["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if impl == "ours-fast":   # after the peak is read: this loads the exact model beside it
        with torch.no_grad():
            agreement(results, cls.from_pretrained(path).eval(), m, cases(vocab))
    print(json.dumps(results))


def time_cases(cases: dict, repeat: int, generate: Callable, screens: list | None = None) -> dict:
    """Times `generate(ids, mask, kwargs)` (sequences, decoder start token first) on every case; `screens`
    collects our beam searches' screens (what the certified search decided, redid, recounted or reran)."""
    results = {}
    for name, ((ids, mask), kwargs) in cases.items():
        out = {}

        def run():
            out["seq"] = generate(ids, mask, kwargs)

        seconds = timed(run, repeat)
        seqs = [[int(t) for t in row] for row in out["seq"]]
        steps = max(len(row) for row in seqs) - 1          # after the decoder start token
        results[name] = {"seconds": seconds, "tok_s": steps * ids.shape[0] / seconds,
                         "ms_token": seconds / steps * 1e3, "seqs": seqs}
        if screens:
            st = screens[-1].stats
            results[name]["screen"] = dict(steps=st.steps, full=st.full_rows, redone=st.redone,
                                           recounts=st.recounts, restarted=st.restarted)
            screens.clear()
    return results


def agreement(results: dict, exact, fast, all_cases: dict) -> None:
    """Fast mode's top-1 agreement with the exact model: both read the exact model's own output teacher-forced,
    and at what share of its positions their best next tokens are the same."""
    for name, ((ids, mask), kwargs) in all_cases.items():
        seqs = exact.generate(input_ids=ids, attention_mask=mask, **kwargs)
        rows = len(seqs) // len(ids)
        enc = dict(input_ids=ids.repeat_interleave(rows, 0), attention_mask=mask.repeat_interleave(rows, 0),
                   decoder_input_ids=seqs)
        same = exact(**enc).logits.argmax(-1) == fast(**enc).logits.argmax(-1)
        results[name]["agreement"] = float(same.float().mean())


def watch_screens() -> list:
    """Our beam searches' screens, as they are made (model.beam_screen.BeamScreen.for_search, wrapped)."""
    from model.beam_screen import BeamScreen

    made, original = [], BeamScreen.for_search

    def spy(*args, **kwargs):
        screen = original(*args, **kwargs)
        if screen is not None:
            made.append(screen)
        return screen

    BeamScreen.for_search = spy
    return made


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
    python = sys.executable if impl.startswith("ours") else str(REF_PYTHON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([python, __file__, "--child", impl, str(path), family, str(repeat), dtype],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_tokens(ours: dict, peer: dict) -> str:
    """Every generated token of every row compared (trailing padding after eos ignored)."""
    strip = [[row[: max(i + 1 for i, t in enumerate(row) if t != 0)] if any(row) else row for row in seqs]
             for seqs in (ours["seqs"], peer["seqs"])]
    if strip[0] == strip[1]:
        return "same"
    for r, (a, b) in enumerate(zip(*strip)):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return f"differ: row {r} at {at}"
    return "differ: row count"


def report(shape: str, res: dict[str, dict], floor_fp32: float, floor_int8: float) -> None:
    """One table: ms/step of each implementation, our speed-up against each, the floor, tokens compared."""
    ours = res["ours"]
    peers = [name for name in res if name != "ours"]
    print(f"\n{shape}: ms per step (speed-up of ours against it; tokens compared with ours)")
    print(f"  floor: fp32 {floor_fp32:.1f} ms, int8 {floor_int8:.1f} ms per step (the weights read once)")
    header = f"  {'case':<10} {'ours':>7} {'/floor':>6}"
    for name in peers:
        header += f" | {name:>22}"
    print(header)
    for case in CASES:
        o = ours[case]
        line = f"  {case:<10} {o['ms_token']:7.1f} {o['ms_token'] / floor_fp32:5.2f}x"
        for name in peers:
            p = res[name][case]
            line += f" | {p['ms_token']:6.1f} {p['ms_token'] / o['ms_token']:5.2f}x {same_tokens(o, p)[:8]:>8}"
        print(line)
        for name in peers:
            same = same_tokens(o, res[name][case])
            if same != "same":
                print(f"    ({name}: tokens {same})")
    if "ours fast" in res:
        line = "  fast mode, top-1 agreement with exact fp32 (teacher-forced on its output):"
        print(line + ",".join(f" {case} {res['ours fast'][case]['agreement']:.1%}" for case in CASES))
        if "CTranslate2 int8" in res:
            ct2 = res["CTranslate2 int8"]
            print("  fast mode ms/step / CTranslate2 int8's:" + ",".join(
                f" {case} {res['ours fast'][case]['ms_token'] / ct2[case]['ms_token']:.2f}" for case in CASES))
    for case in CASES:
        if "screen" in ours[case]:
            st = ours[case]["screen"]
            print(f"  {case}: certified beams, last run: {st['steps']} screened steps, {st['full']} on full "
                  f"logits, {st['redone']} redone, {st['recounts']} recounts, "
                  f"{'rerun exactly' if st['restarted'] else 'no rerun'}")
    if "transformers" in res:
        o, r = ours["encoder_512"]["seconds"], res["transformers"]["encoder_512"]["seconds"]
        print(f"  {'encoder_512':<10} {o * 1e3:7.1f} ms | transformers {r * 1e3:7.1f} ms | {r / o:5.2f}x")
    line = f"  {'peak RSS':<10} {ours['peak_rss'] / 1e9:5.2f} GB"
    for name in peers:
        line += f" | {name} {res[name]['peak_rss'] / 1e9:5.2f} GB ({ours['peak_rss'] / res[name]['peak_rss']:.2f}x)"
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workdir", default="/tmp/mt5-bench-generate")
    ap.add_argument("--only", help="comma-separated subset of ours,ours-fast,transformers,ct2-float32,ct2-int8 "
                                   "(the table needs ours; without it the raw results are printed)")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2")
    ap.add_argument("--child", nargs=5)
    args = ap.parse_args()
    if args.child:
        impl, path, family, repeat, dtype = args.child
        return child(impl, path, family, int(repeat), dtype)
    if not REF_PYTHON.exists():
        sys.exit(f"{REF_PYTHON} missing: run `bash .ci/setup-reference` first")
    print(f"{NEW_TOKENS} new tokens per row (XLSum: up to max_length), 2 threads, {args.dtype}, best of "
          f"{args.repeat} after a warm-up")
    gb_s = floor.bandwidth()
    print(f"streaming read bandwidth: {gb_s / 1e9:.1f} GB/s (1 GiB buffer, best of 15 reads)")
    for shape in args.shapes.split(","):
        path, family = make_checkpoint(shape, Path(args.workdir))
        impls = args.only.split(",") if args.only else ["ours", "ours-fast", "transformers"]
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
        if "ours" not in res:
            print(shape, json.dumps(res))
            continue
        cfg = json.loads((path / "config.json").read_text())
        named = {("CTranslate2 " + impl[4:] if impl.startswith("ct2-") else impl.replace("-", " ")): r
                 for impl, r in res.items()}
        report(shape, named, floor.floor_ms(cfg, gb_s), floor.floor_ms(cfg, gb_s, 1.0))


if __name__ == "__main__":
    main()
