"""Memory and speed of mT5 in fp32, bf16, 4 and 8 bits: ours next to transformers + bitsandbytes, one table.

    python bench/memory.py [--shapes mt5-small,mt5-base] [--tokens 32]

Random weights (fixed seed), 2 threads. Each configuration runs in its own subprocess and reports: its
weights' bytes; the peak resident memory it added after its imports (load, quantize, generate); greedy tokens/s
(128-token input, exactly --tokens new tokens); and, against our fp32 on the same inputs, the logits' relative
error and top-1 agreement at every position of fp32's greedy output (teacher-forced, so one early difference
does not count for all later positions). transformers runs in .venv-ref (4.57 + bitsandbytes); its 4-bit keeps
lm_head and the embedding in full precision. CTranslate2 int8 (also in .venv-ref, see bench/ct2.py) is the
fastest CPU runtime we know of: its weights are not Python tensors (the column shows its peak memory instead) and it
returns log-probabilities, so it has an agreement figure but no logit error.

Also per configuration: "torch MB", the process's resident memory after importing torch and the model code (what
any configuration pays before it loads a weight); "decode MB", the whole process's peak while decoding (the high
water mark is reset after the warm-up), next to issue 15's budget for it (torch + weights + 100 MB); and the
floor, the time reading the weights one decoding step uses (decoder + output projection, as stored) takes at
this machine's streaming bandwidth (bench/floor.py, measured once per run).
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
sys.path.insert(0, str(ROOT / "bench"))
import ct2  # noqa: E402
import floor  # noqa: E402
from generate import REF_PYTHON, make_checkpoint  # noqa: E402
from load import rss_now  # noqa: E402

CONFIGS = {
    "ours fp32": ("ours", dict()),
    "ours bf16": ("ours", dict(dtype="bfloat16")),
    "transformers+bnb nf4": ("transformers", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4")),
    "ours nf4 (bnb, Linear-only)": ("ours", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4")),
    "ours int4 (Linear-only)": ("ours", dict(load_in_4bit=True, bnb_4bit_quant_type="int4")),
    "ours int4 + emb + lm_head": ("ours", dict(load_in_4bit=True, bnb_4bit_quant_type="int4",
                                               quantize_embeddings=True)),
    "ours int8 (Linear-only)": ("ours", dict(load_in_8bit=True)),
    "ours int8 + emb + lm_head": ("ours", dict(load_in_8bit=True, quantize_embeddings=True)),
    "CTranslate2 int8": ("ct2", dict(compute_type="int8")),
}


def load(impl: str, path: str, options: dict):
    import torch

    if impl == "ours":
        sys.path.insert(0, str(ROOT))
        from model import MT5ForConditionalGeneration

        return MT5ForConditionalGeneration.from_pretrained(path, **options)
    from transformers import BitsAndBytesConfig, MT5ForConditionalGeneration

    if options.get("load_in_4bit"):
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=options["bnb_4bit_quant_type"],
                               bnb_4bit_compute_dtype=torch.float32)
        return MT5ForConditionalGeneration.from_pretrained(path, quantization_config=q, dtype=torch.float32,
                                                           device_map="cpu")
    return MT5ForConditionalGeneration.from_pretrained(path)


def weight_bytes(m) -> int:
    seen, total = set(), 0
    for t in list(m.parameters()) + list(m.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def step_bytes(m) -> int:
    """Bytes of the weights one decoding step reads: the decoder's and the output projection's, as stored."""
    seen, total = set(), 0
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if (name.startswith("decoder.") or name.startswith("lm_head.")) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def peak_reset() -> None:
    """Resets this process's peak resident memory (VmHWM) to its current value (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_peak_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(impl: str, path: str, options: str, tokens: int, workdir: str) -> None:
    import torch

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 250000, (1, 128), generator=g)
    ids[0, -1] = 1
    if impl == "ct2":   # after our fp32, whose tokens and logits it is compared with
        import ct2

        reference = json.loads((Path(workdir) / "fp32_tokens.json").read_text())
        expected = torch.load(Path(workdir) / "fp32_logits.pt").argmax(-1)[0].tolist()
        result = ct2.memory_child(path, json.loads(options)["compute_type"], ids, tokens, reference, expected)
        print(json.dumps(result))
        return
    if impl == "ours":
        sys.path.insert(0, str(ROOT))
        import model  # noqa: F401 (its import is part of the footprint every configuration pays)
    else:
        import transformers  # noqa: F401
    base = rss_now()
    m = load(impl, path, json.loads(options)).eval()
    loaded = rss_now() - base
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens)
    with torch.no_grad():
        m.generate(input_ids=ids, max_new_tokens=2)  # warm-up (kernels' layouts, first allocations)
        peak_reset()
        start = time.perf_counter()
        seq = m.generate(input_ids=ids, **kwargs)
        seconds = time.perf_counter() - start
        decode_peak = rss_peak_now()
        ref_path = Path(workdir) / "fp32_tokens.json"
        if not ref_path.exists():
            ref_path.write_text(json.dumps(seq[0].tolist()))
        ref_seq = torch.tensor([json.loads(ref_path.read_text())])
        logits = m(input_ids=ids, decoder_input_ids=ref_seq[:, :-1]).logits.float()
    out_logits = Path(workdir) / "fp32_logits.pt"
    if not out_logits.exists():
        torch.save(logits, out_logits)
    ref_logits = torch.load(out_logits)
    error = ((logits - ref_logits).norm() / ref_logits.norm()).item()
    # teacher-forced top-1 agreement: free-running sequences diverge for good after one different token
    agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rss_loaded": loaded, "weights": weight_bytes(m), "peak": peak - base, "tok_s": tokens / seconds,
                      "ms_token": seconds / tokens * 1e3, "logit_err": error, "agree": agree, "torch_rss": base,
                      "decode_peak": decode_peak, "step_bytes": step_bytes(m)}))


def run(name: str, impl: str, options: dict, path: Path, tokens: int, workdir: Path) -> dict:
    python = sys.executable if impl == "ours" else str(REF_PYTHON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([python, __file__, "--child", impl, str(path), json.dumps(options), str(tokens),
                           str(workdir)], capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mt5-small,mt5-base")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--workdir", default="/tmp/mt5-bench-generate")
    ap.add_argument("--child", nargs=5)
    args = ap.parse_args()
    if args.child:
        impl, path, options, tokens, workdir = args.child
        return child(impl, path, options, int(tokens), workdir)
    gb_s = floor.bandwidth()
    print(f"streaming read bandwidth: {gb_s / 1e9:.1f} GB/s; floor = decoder + output projection bytes / that; "
          "budget = torch + weights + 100 MB (issue 15's bound on decode MB)")
    for shape in args.shapes.split(","):
        path, _ = make_checkpoint(shape, Path(args.workdir))
        work = Path(args.workdir) / f"{shape}-memory"
        work.mkdir(parents=True, exist_ok=True)
        for f in work.iterdir():
            f.unlink()
        print(f"\n{shape}: {args.tokens} greedy tokens, 2 threads; error and agreement against our fp32")
        print(f"  {'configuration':<30} {'weights MB':>10} {'peak MB':>8} {'torch MB':>8} {'decode MB':>9} "
              f"{'budget':>6} {'tok/s':>7} {'ms/tok':>7} {'floor':>6} {'logit rel err':>13} {'tokens agree':>12}")
        for name, (impl, options) in CONFIGS.items():
            if impl == "ct2":
                if not ct2.available(REF_PYTHON):
                    print(f"  {name:<30} skipped: ctranslate2 is not in {REF_PYTHON} (bash .ci/setup-reference)")
                    continue
                r = run(name, impl, options, ct2.converted(path, REF_PYTHON), args.tokens, work)
            else:
                r = run(name, impl, options, path, args.tokens, work)
            if "error" in r:
                print(f"  {name:<30} failed: {r['error']}")
                continue
            weights = "—" if r["weights"] is None else f"{r['weights'] / 2**20:.0f}"
            error = "—" if r["logit_err"] is None else f"{r['logit_err']:.4f}"
            mb = {k: "—" if r.get(k) is None else f"{r[k] / 2**20:.0f}" for k in ("torch_rss", "decode_peak")}
            budget = "—" if r.get("torch_rss") is None else f"{(r['torch_rss'] + r['weights']) / 2**20 + 100:.0f}"
            step = "—" if r.get("step_bytes") is None else f"{r['step_bytes'] / gb_s * 1e3:.1f}"
            print(f"  {name:<30} {weights:>10} {r['peak'] / 2**20:8.0f} {mb['torch_rss']:>8} "
                  f"{mb['decode_peak']:>9} {budget:>6} {r['tok_s']:7.1f} {r['ms_token']:7.1f} {step:>6} "
                  f"{error:>13} {r['agree'] * 100:11.0f}%")


if __name__ == "__main__":
    main()
