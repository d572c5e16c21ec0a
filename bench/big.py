"""The big checkpoints on a free CPU Space (16 GB): resident weights of mt0-xxl, umt5-xxl, aya-101 and MADLAD-400
under each precision, and the peak while loading them.

    python bench/big.py [--space-gb 16]
    python bench/big.py --run [--layers N] [--wo int8|bf16]   # build a random mt0-xxl-shape checkpoint once,
                                                               # load it in int4, decode
    python bench/big.py --agree --layers 2     # int4 greedy tokens against our own fp32 model's, per position

No weights are read: each model is built on PyTorch's meta device from its real config.json (the shapes below are
the Hub configs'), and every layer is swapped for the module this library would hold (model.quant's Int4Linear /
Int8Linear / embeddings, `wo` kept unquantized as QuantOptions.targets keeps it, or int8 with int8_wo), so the bytes
are those of the buffers and parameters a loaded model has, not a formula. "Loading peak" adds the largest single
tensor in the unquantized dtype (the shared embedding, read and converted 64 MB of rows at a time, then quantized)
and one 64 MB chunk: loading quantizes layer by layer (model/loading.py, measured on a 247 MB checkpoint in
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
    "int4 all, int8 wo": ("bfloat16", dict(load_in_4bit=True, bnb_4bit_quant_type="int4",
                                           quantize_embeddings=True, int8_wo=True)),
}
WO = {"int8": True, "bf16": False}   # --wo: the feed-forward output projection in int8, or kept in bf16
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


def build_checkpoint(path: Path, family: str, fields: dict, layers: int | None = None,
                     shard_bytes: int = 5 * 10 ** 9) -> Path:
    """A random checkpoint of this shape in the Hub's layout (bf16 safetensors shards of ~5 GB and their index),
    written tensor by tensor (the model never exists in memory); reused when it is there. `layers` overrides
    the depth (a reduced-depth copy)."""
    import json

    import torch
    from safetensors.torch import save_file

    import model
    from model.config import config_class

    if (path / "model.safetensors.index.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    fields = dict(fields, **({"num_layers": layers} if layers else {}))
    config = config_class(family)(**fields)
    with torch.device("meta"):
        meta = model.model_class(family, "generation")(config)
    g = torch.Generator().manual_seed(0)
    shard, size, index, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}-of-NNNNN.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        index.update({k: name for k in shard})
        shard, size = {}, 0

    for key, t in meta.state_dict().items():
        value = torch.empty(t.shape, dtype=torch.bfloat16)
        if key.endswith("layer_norm.weight"):
            value.fill_(1.0)
        else:   # fan-in scaled, so states stay O(1) through the depth and logits O(1)
            value.normal_(0.0, 1.0 if key.endswith(("shared.weight", "relative_attention_bias.weight"))
                          else t.shape[-1] ** -0.5, generator=g)
        shard[key] = value
        size += value.numel() * 2
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    for old in sorted(path.glob("model-*-of-NNNNN.safetensors")):
        old.rename(path / old.name.replace("NNNNN", f"{n:05d}"))
    index = {k: v.replace("NNNNN", f"{n:05d}") for k, v in index.items()}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config.replace(torch_dtype="bfloat16").save_pretrained(path)
    return path


RUN = """
import json, re, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
import model

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 2 ** 20

out = {{}}
start = time.perf_counter()
m = model.load_model({path!r}, dtype="bfloat16", load_in_4bit=True, bnb_4bit_quant_type="int4",
                     quantize_embeddings=True, int8_wo={int8_wo})
out["load_s"] = time.perf_counter() - start
out["load_peak_gb"] = status("VmHWM")
out["resident_gb"] = status("VmRSS")
ids = torch.randint(3, 250000, (1, 200), generator=torch.Generator().manual_seed(1))
def timed(**kw):
    start = time.perf_counter()
    m.generate(ids, **kw)
    return time.perf_counter() - start

with torch.no_grad():
    out["cold_first_token_s"] = timed(max_new_tokens=1)        # the first call also builds the kernels' packs
    out["first_token_s"] = timed(max_new_tokens=1)             # encoder (200 tokens) and one decoder step
    for name, kw, n in (("greedy", {{}}, 9), ("beam4", dict(num_beams=4), 5)):
        one = timed(max_new_tokens=1, **kw)
        out[name + "_ms_token"] = (timed(max_new_tokens=n, min_new_tokens=n, **kw) - one) / (n - 1) * 1e3
out["decode_peak_gb"] = status("VmHWM")
print(json.dumps(out))
"""


AGREE = """
import json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
import model
from model.quant import Int4Linear, Int8Linear

gen = torch.Generator().manual_seed(2)
inputs = [torch.randint(3, 250000, (1, n), generator=gen) for n in (12, 40, 90, 200)]
full = model.load_model({path!r}, dtype="float32")
seen = {{}}   # each Linear's input and fp32 output on the first input (the layer check below)
def keep(name):
    def hook(mod, x, y):   # returns None: the output stays the module's
        if x[0].numel():     # the decoding head also runs on empty batches (its screen's rescoring)
            seen.setdefault(name, (x[0].detach(), y.detach()))
    return hook

hooks = [m.register_forward_hook(keep(name)) for name, m in full.named_modules() if isinstance(m, torch.nn.Linear)]

def agreement(m, paths):
    # teacher-forced on the fp32 model's greedy path: m's choice at every position
    with torch.no_grad():
        return sum(int((m(input_ids=ids, decoder_input_ids=p[:, :-1]).logits[0].argmax(-1) == p[0, 1:]).sum())
                   for ids, p in zip(inputs, paths))

with torch.no_grad():
    paths = [full.generate(ids, max_new_tokens={steps}, min_new_tokens={steps}) for ids in inputs]
    for h in hooks:
        h.remove()
    torch.manual_seed(0)   # calibration: how far 1% of Gaussian noise on every weight moves this random network
    for name, m in full.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            m.weight.add_(torch.randn_like(m.weight) * m.weight.std() * 0.01)
out = dict(total=sum(p.shape[1] - 1 for p in paths), noise=agreement(full, paths))
del full
layers = {{}}
for label, options in (("int4", dict(load_in_4bit=True, bnb_4bit_quant_type="int4", quantize_embeddings=True,
                                      int8_wo={int8_wo})),
                       ("int8", dict(load_in_8bit=True, quantize_embeddings=True))):
    q = model.load_model({path!r}, dtype="bfloat16", **options)
    out[label] = agreement(q, paths)
    for name, m in q.named_modules():
        if isinstance(m, (Int4Linear, Int8Linear)) and name in seen:
            x, y = seen[name]
            with torch.no_grad():
                got = m(x.to(torch.bfloat16)).float()
            kind = ("int4 " if isinstance(m, Int4Linear) else "int8 ") + name.rsplit(".", 1)[-1]
            layers.setdefault(label + ": " + kind, []).append(float((got - y).norm() / y.norm()))
    del q
out["layers"] = {{k: [min(v), max(v), len(v)] for k, v in sorted(layers.items())}}
print(json.dumps(out))
"""


def child(code: str) -> dict:
    import json
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(path: Path, int8_wo: bool) -> dict:
    """Loads the checkpoint in int4 (embeddings too; `wo` int8 or bf16, the rest bf16) in a child and times it."""
    return child(RUN.format(root=str(ROOT), path=str(path), int8_wo=int8_wo))


def agreement(path: Path, int8_wo: bool, steps: int = 32) -> dict:
    """int4 greedy choices against our own fp32 model's on the same random checkpoint, per position."""
    return child(AGREE.format(root=str(ROOT), path=str(path), int8_wo=int8_wo, steps=steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space-gb", type=float, default=16.0)
    ap.add_argument("--run", action="store_true", help="build (once) a random mt0-xxl-shape checkpoint in the "
                                                         "Hub's layout and measure loading and decoding in int4")
    ap.add_argument("--layers", type=int, default=None, help="with --run / --agree: a reduced-depth copy")
    ap.add_argument("--wo", choices=list(WO), default="int8", help="the feed-forward output projection's weights")
    ap.add_argument("--agree", action="store_true", help="int4 greedy tokens vs our fp32 model's (needs ~4 GB per "
                                                         "layer pair in fp32 plus 8 GB of embeddings: use --layers)")
    ap.add_argument("--workdir", default="/tmp/mt5-bench-big")
    args = ap.parse_args()
    if args.run or args.agree:
        family, fields = CHECKPOINTS["bigscience/mt0-xxl"]
        path = build_checkpoint(Path(args.workdir) / f"mt0-xxl-{args.layers or 'full'}", family, fields,
                                args.layers)
    if args.agree:
        r = agreement(path, WO[args.wo])
        n = args.layers or fields["num_layers"]
        print(f"mt0-xxl shape ({n}+{n} layers), 4 random inputs x 32 greedy steps of our fp32 model; each model's "
              f"choice at every position, teacher-forced on that path ({r['total']} positions):")
        for label, key in (("fp32 with 1% Gaussian noise on every weight (calibration)", "noise"),
                           (f"int4 with embeddings, {args.wo} wo", "int4"), ("int8 with embeddings", "int8")):
            print(f"  {label:<58} {r[key]:>4}/{r['total']} ({100 * r[key] / r['total']:.1f}%)")
        print("Each quantized layer on the fp32 model's own activations: output error relative to fp32 "
              "(min, max over layers):")
        for kind, (low, high, count) in r["layers"].items():
            print(f"  {kind:<22} {low:.4f} .. {high:.4f}  ({count} layers)")
        return
    if args.run:
        r = measure(path, WO[args.wo])
        print(f"mt0-xxl shape ({args.layers or fields['num_layers']}+{args.layers or fields['num_layers']} layers), "
              f"int4 with embeddings, {args.wo} wo, bf16 rest, 2 threads: load {r['load_s']:.0f} s, peak RSS "
              f"{r['load_peak_gb']:.1f} GB while loading, {r['resident_gb']:.1f} GB after, "
              f"{r['decode_peak_gb']:.1f} GB while decoding; first token of a 200-token input "
              f"{r['first_token_s']:.1f} s ({r['cold_first_token_s']:.1f} s for the first request after load); "
              f"after it, greedy {r['greedy_ms_token']:.0f} ms/token "
              f"({1e3 / r['greedy_ms_token']:.1f} tokens/s), beam 4 {r['beam4_ms_token']:.0f} ms/token")
        return
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
