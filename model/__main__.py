"""Command line: `python -m model generate --model ID_OR_DIR [options] [--input FILE] [--output FILE]`.

Reads one text per line from --input (or stdin), generates in batches, writes one output per line (or JSONL with
--jsonl). A progress bar goes to stderr when reading a file.
"""
from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from .registry import load_model
from .textgen import clean_ids, encode_inputs
from .tokenizer import MT5Tokenizer

DECODING = {  # option -> type; names as in transformers' generate()
    "max_new_tokens": int, "min_new_tokens": int, "max_length": int, "num_beams": int, "length_penalty": float,
    "num_return_sequences": int, "temperature": float, "top_k": int, "top_p": float,
    "repetition_penalty": float, "no_repeat_ngram_size": int, "seed": int,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text-to-text generation over lines of text")
    g.add_argument("--model", required=True, help="Hub repo id or local checkpoint directory")
    g.add_argument("--input", help="file with one text per line (default: stdin)")
    g.add_argument("--output", help="file to write (default: stdout)")
    g.add_argument("--jsonl", action="store_true", help="write JSON lines {input, output, truncated}")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-input-tokens", type=int, default=512)
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, or 0 for the first GPU")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    g.add_argument("--revision")
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--early-stopping", action="store_true")
    for name, kind in DECODING.items():
        g.add_argument("--" + name.replace("_", "-"), type=kind)
    return ap.parse_args(argv)


def batches(lines: list[str], size: int):
    for i in range(0, len(lines), size):
        yield lines[i:i + size]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = f"cuda:{args.device}" if args.device.isdigit() else args.device
    model = load_model(args.model, task="generation", revision=args.revision, dtype=args.dtype).to(device)
    tokenizer = MT5Tokenizer.from_pretrained(args.model, revision=args.revision)
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    lines = [line.rstrip("\n") for line in source]
    gen = {k: getattr(args, k) for k in DECODING if getattr(args, k) is not None}
    gen.update(do_sample=args.do_sample or None, early_stopping=args.early_stopping or None)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    progress = None
    if args.input:
        progress = tqdm(total=len(lines), unit="line", file=sys.stderr)
    per_input = gen.get("num_return_sequences") or 1
    for chunk in batches(lines, args.batch_size):
        texts = [t if t.strip() else "" for t in chunk]
        live = [i for i, t in enumerate(texts) if t]
        results = {i: [""] * per_input for i in range(len(texts))}
        truncated = {i: False for i in range(len(texts))}
        if live:  # empty lines give empty outputs rather than stopping the whole file
            enc = encode_inputs(tokenizer, [texts[i] for i in live], args.max_input_tokens, device)
            seqs = model.generate(enc.input_ids, enc.attention_mask, **gen)
            decoded = [tokenizer.decode(clean_ids(tokenizer, row[1:])) for row in seqs]
            for j, i in enumerate(live):
                results[i] = decoded[j * per_input:(j + 1) * per_input]
                truncated[i] = enc.truncated[j]
        for i, text in enumerate(chunk):
            outputs = results[i]
            if args.jsonl:
                record = {"input": text, "output": outputs[0] if per_input == 1 else outputs,
                          "truncated": truncated[i]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                out.write("\t".join(o.replace("\n", " ") for o in outputs) + "\n")
        out.flush()
        if progress:
            progress.update(len(chunk))
    if progress:
        progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
