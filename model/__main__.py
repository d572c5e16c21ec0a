"""Command line: `python -m model generate --model ID_OR_DIR [options] [--input FILE] [--output FILE]`.

Reads one text per line from --input (or stdin), generates in batches, writes one output per line (or JSONL with
--jsonl). A progress bar goes to stderr when reading a file.

`python -m model explain --model ID_OR_DIR --method METHOD [options] [--input FILE] [--output FILE]` writes, per
input line, a JSON line of explanation scores (see model/explain.py) for the output: the line's own `output`
when it is a JSON object as `generate --jsonl` writes them, else the model's greedy output. A row that cannot be
explained gets `{"input", "error"}` and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from . import explain
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

    e = sub.add_parser("explain", help="explanation scores for each line's output (JSON lines)")
    e.add_argument("--model", required=True, help="Hub repo id or local checkpoint directory")
    e.add_argument("--method", required=True, choices=list(explain.METHODS))
    e.add_argument("--input", help="file with one text per line, or JSON lines with `input` and optionally "
                                   "`output` (default: stdin)")
    e.add_argument("--output", help="JSON lines file to write (default: stdout)")
    e.add_argument("--positions", type=position_list, help="output positions to attribute, comma-separated "
                                                            "(gradient methods; default: all)")
    e.add_argument("--steps", type=int, default=explain.DEFAULT_IG_STEPS, help="integrated gradients' steps")
    e.add_argument("--ig-method", default="gausslegendre", choices=explain.IG_METHODS)
    e.add_argument("--baseline-token", type=int, help="integrated gradients: this token's embedding as the "
                                                      "baseline (default: zero embeddings)")
    e.add_argument("--position", type=int, help="contrastive: the output position")
    e.add_argument("--alternative", help="contrastive: the word the model could have written instead")
    e.add_argument("--alternative-mode", default="first_token", choices=explain.CONTRAST_MODES)
    e.add_argument("--max-input-tokens", type=int, default=512)
    e.add_argument("--max-new-tokens", type=int, help="length limit when the output is generated")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, or 0 for the first GPU")
    e.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    e.add_argument("--revision")
    args = ap.parse_args(argv)
    if args.command == "explain" and args.method == "contrastive" and (args.position is None or
                                                                         args.alternative is None):
        ap.error("--method contrastive needs --position and --alternative")
    return args


def position_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"positions must be whole numbers separated by commas, got {text!r}") from None


def batches(lines: list[str], size: int):
    for i in range(0, len(lines), size):
        yield lines[i:i + size]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "explain":
        return explain_lines(args)
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


def explain_lines(args: argparse.Namespace) -> int:
    """`explain`: one JSON line of scores per input line, in order."""
    device = f"cuda:{args.device}" if args.device.isdigit() else args.device
    model = load_model(args.model, task="generation", revision=args.revision, dtype=args.dtype).to(device)
    tokenizer = MT5Tokenizer.from_pretrained(args.model, revision=args.revision)
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    lines = [line.rstrip("\n") for line in source]
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    failed = 0
    for line in tqdm(lines, unit="line", file=sys.stderr, disable=not args.input):
        text, given = explain_input(line)
        try:
            record = explain_row(model, tokenizer, text, given, args)
        except ValueError as err:   # this row's input (empty, too short for a position, ...): the others go on
            record, failed = {"input": text, "error": str(err)}, failed + 1
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
    return 1 if failed else 0


def explain_input(line: str) -> tuple[str, str | None]:
    """(source text, given output or None): a JSON object line gives `input` and `output`, any other is the text."""
    if line.lstrip().startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return line, None
        if isinstance(row, dict) and isinstance(row.get("input"), str):
            output = row.get("output")
            return row["input"], output if isinstance(output, str) else None
    return line, None


def explain_row(model, tokenizer, text: str, given: str | None, args: argparse.Namespace) -> dict:
    """One row's record: the texts, the tokens on each axis (source, output, decoder prefix) and the scores."""
    enc = encode_inputs(tokenizer, text, args.max_input_tokens, model.device)
    ids, mask = enc.input_ids, enc.attention_mask
    if given is None:
        gen = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
        target = explain.generate_target(model, ids, mask, **gen)
    else:
        target = torch.tensor([tokenizer.encode(given)], device=model.device)
    options = {}
    if args.method in ("gradient_x_input", "saliency", "integrated_gradients") and args.positions:
        options["positions"] = args.positions
    if args.method == "integrated_gradients":
        options.update(steps=args.steps, method=args.ig_method, baseline_token=args.baseline_token)
    if args.method == "contrastive":
        options.update(position=args.position, alternative=args.alternative, tokenizer=tokenizer,
                       mode=args.alternative_mode)
    result = explain.METHODS[args.method].run(model, ids, mask, target, **options)
    target_ids = target[0].tolist()
    output = given if given is not None else tokenizer.decode(clean_ids(tokenizer, target_ids))
    record = {"input": text, "output": output,
              "truncated": enc.truncated[0], "source_tokens": tokenizer.convert_ids_to_tokens(ids[0].tolist()),
              "target_tokens": tokenizer.convert_ids_to_tokens(target_ids),
              "prefix_tokens": tokenizer.convert_ids_to_tokens([model.config.decoder_start_token_id]
                                                               + target_ids[:-1])}
    record.update(result.as_dict())
    if isinstance(result, explain.Contrast):
        record.update(produced_tokens=tokenizer.convert_ids_to_tokens(result.produced_ids),
                      alternative_tokens=tokenizer.convert_ids_to_tokens(result.alternative_ids))
    return record


if __name__ == "__main__":
    sys.exit(main())
